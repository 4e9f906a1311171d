package diskimage

import (
	"bytes"
	"fmt"
	"text/template"
)

// ovfParams are the values an OVA's descriptor carries.
type ovfParams struct {
	VMDK      string // the disk's file name in the package
	VMDKSize  int64  // its size in bytes
	Capacity  int64  // the virtual disk's size in bytes
	Populated int64  // bytes of the disk that hold data
	Name      string // the virtual system's name
	CPUs      int
	MemoryMiB int
}

// ovfTemplate is an OVF 1.0 envelope (DSP0243 1.x, the namespace
// vSphere, VMware Workstation/Fusion and VirtualBox all read): the VMDK
// in References, the disk in DiskSection (capacity in bytes, the
// streamOptimized format URI, the populated size), one logical network,
// and one virtual system: Linux 64-bit (CIM OS type 101, which VirtualBox
// maps to Linux26_x64), 2 CPUs, 2 GiB, an LSI Logic SCSI controller (the
// adapter the VMDK descriptor names) holding the disk, an E1000 NIC, and
// UEFI firmware (VMware's vmw:Config firmware=efi; not required, so other
// readers may ignore it). RASD and VSSD elements are in the alphabetical
// order the CIM schemas' sequences require.
var ovfTemplate = template.Must(template.New("ovf").Parse(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{{.VMDK}}" ovf:id="file1" ovf:size="{{.VMDKSize}}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{{.Capacity}}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{{.Populated}}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The network the virtual machine connects to</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{{.Name}}">
    <Info>A virtual machine that boots by UEFI</Info>
    <Name>{{.Name}}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux 64-Bit</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{{.Name}}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{{.CPUs}} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.CPUs}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>{{.MemoryMiB}} MiB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.MemoryMiB}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>E1000 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`))

// ovfDescriptor returns the OVF descriptor of p.
func ovfDescriptor(p ovfParams) ([]byte, error) {
	var b bytes.Buffer
	if err := ovfTemplate.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("ovf: %w", err)
	}
	return b.Bytes(), nil
}
