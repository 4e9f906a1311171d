package layout

import (
	"fmt"
	"sort"
	"strings"
)

// Partition type GUIDs that kiln knows by name. The CoreOS ones are those of
// Container Linux's cgpt and disk_util (and Flatcar's, which kept them under
// flatcar-* names); the others are the UEFI / freedesktop values.
var (
	TypeESP            = MustGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	TypeBIOSBoot       = MustGUID("21686148-6449-6E6F-744E-656564454649")
	TypeCoreOSUsr      = MustGUID("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6")
	TypeCoreOSResize   = MustGUID("3884DD41-8582-4404-B9A8-E9B84F2DF50E")
	TypeCoreOSReserved = MustGUID("C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0")
	TypeLinuxData      = MustGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
)

// typeAlias is one name a layout may use for a type GUID. The first alias of
// a GUID in the list is its display name.
type typeAlias struct {
	name string
	guid GUID
}

// typeAliases is read-only data: the names accepted in layout files.
var typeAliases = []typeAlias{
	{"esp", TypeESP},
	{"efi", TypeESP},
	{"bios-boot", TypeBIOSBoot},
	{"bios", TypeBIOSBoot},
	{"coreos-usr", TypeCoreOSUsr},
	{"coreos-rootfs", TypeCoreOSUsr},
	{"flatcar-usr", TypeCoreOSUsr},
	{"flatcar-rootfs", TypeCoreOSUsr},
	{"coreos-resize", TypeCoreOSResize},
	{"flatcar-resize", TypeCoreOSResize},
	{"coreos-reserved", TypeCoreOSReserved},
	{"flatcar-reserved", TypeCoreOSReserved},
	{"linux-data", TypeLinuxData},
	{"data", TypeLinuxData},
}

// TypeBlank is the alias of a numbered slot that has no GPT entry, as
// disk_util's "blank" (Container Linux's ROOT-C and partition 8).
const TypeBlank = "blank"

// ParseType resolves a type alias or a literal GUID.
func ParseType(s string) (GUID, error) {
	for _, a := range typeAliases {
		if strings.EqualFold(a.name, s) {
			return a.guid, nil
		}
	}
	if len(s) == 36 {
		return ParseGUID(s)
	}
	return GUID{}, fmt.Errorf("unknown type %q: want a GUID or one of %s", s, strings.Join(TypeNames(), ", "))
}

// TypeName returns the display name of a type GUID, or the GUID itself.
func TypeName(g GUID) string {
	for _, a := range typeAliases {
		if a.guid == g {
			return a.name
		}
	}
	return g.String()
}

// TypeNames lists every accepted alias, sorted.
func TypeNames() []string {
	var names []string
	for _, a := range typeAliases {
		names = append(names, a.name)
	}
	names = append(names, TypeBlank)
	sort.Strings(names)
	return names
}
