// Package yamlerr turns the YAML decoder's errors into ones a person can
// act on: the line, the key (as a dotted path, list items by index) and
// what was wrong, without the names of kiln's Go types.
package yamlerr

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one decoding problem.
type Problem struct {
	Line int    // 1-based, in the document the node tree came from
	Key  string // "partitions.USR-A.level", "partitions[2].size"
	Msg  string // "unknown key", "want a number, got a string"
}

var (
	lineRE     = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownRE  = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	unmarshalR = regexp.MustCompile(`^cannot unmarshal !!(\w+)(?: .*)? into (\S+)$`)
)

// kinds names YAML tags and Go types as a person says them.
var kinds = map[string]string{
	"seq": "a list", "map": "a mapping", "str": "a string", "int": "a number", "float": "a number",
	"bool": "true or false", "null": "nothing", "string": "a string", "int64": "a number", "int32": "a number",
	"uint8": "a number", "uint32": "a number", "uint64": "a number", "float64": "a number",
}

func kind(s string) string {
	if k, ok := kinds[strings.TrimPrefix(s, "*")]; ok {
		return k
	}
	switch {
	case strings.HasPrefix(s, "[]"):
		return "a list"
	case strings.HasPrefix(s, "map["):
		return "a mapping"
	}
	return "another kind of value"
}

// Problems explains err, an error from decoding root's document into a
// struct, or returns nil when err is no *yaml.TypeError.
func Problems(err error, root *yaml.Node) []Problem {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return nil
	}
	var out []Problem
	for _, e := range te.Errors {
		m := lineRE.FindStringSubmatch(e)
		if m == nil {
			out = append(out, Problem{Msg: e})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		p := Problem{Line: line, Msg: m[2]}
		if u := unknownRE.FindStringSubmatch(m[2]); u != nil {
			p.Msg = "unknown key"
			p.Key = join(KeyAt(root, line, true), u[1])
		} else if u := unmarshalR.FindStringSubmatch(m[2]); u != nil {
			p.Msg = fmt.Sprintf("want %s, got %s", kind(u[2]), kind(u[1]))
			p.Key = KeyAt(root, line, false)
		}
		out = append(out, p)
	}
	return out
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// KeyAt returns the path of the value on line of root's document: the
// innermost mapping key on that line (a list item only when no key is);
// with parent set, the path of the mapping that holds a key on that line.
func KeyAt(root *yaml.Node, line int, parent bool) string {
	if root != nil && root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	key, item := "", ""
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := join(path, k.Value)
				if k.Line == line {
					key = p
					if parent {
						key = path
					}
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && item == "" {
					item = p
				}
				walk(c, p)
			}
		}
	}
	if root != nil {
		walk(root, "")
	}
	if key == "" && !parent {
		return item
	}
	return key
}

// LineOf returns the line of the key at path in root's document, or 0.
func LineOf(root *yaml.Node, path string) int {
	if root != nil && root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	line := 0
	var walk func(n *yaml.Node, p string)
	walk = func(n *yaml.Node, p string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				kp := join(p, n.Content[i].Value)
				if kp == path {
					line = n.Content[i].Line
				}
				walk(n.Content[i+1], kp)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				ip := fmt.Sprintf("%s[%d]", p, i)
				if ip == path {
					line = c.Line
				}
				walk(c, ip)
			}
		}
	}
	if root != nil {
		walk(root, "")
	}
	return line
}

var syntaxLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// Syntax explains a YAML syntax error err of document data: the line to
// blame and what is wrong there. The YAML parser names the line where the
// block it could not finish began (a wrong indent on line 12 is reported
// at line 5, a tab on line 3 at line 2); Syntax looks for the line itself:
// the first tab in an indentation, else the first line indented to no
// level of the blocks around it. When it finds none it keeps the parser's
// line and message; line is 0 when the parser gave none.
func Syntax(data []byte, err error) (line int, msg string) {
	msg = err.Error()
	if m := syntaxLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		if strings.Contains(indent, "\t") && strings.TrimSpace(l) != "" {
			return i + 1, "a tab in the indentation (YAML indents with spaces only)"
		}
	}
	if n := misindented(lines); n > 0 {
		return n, fmt.Sprintf("indented to no level of the blocks around it (%s)", msg)
	}
	return line, msg
}

// flowDepth returns how many [ and { a line opens, less those it closes,
// outside quotes.
func flowDepth(line string) int {
	d := 0
	var quote rune
	for _, c := range line {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '[' || c == '{':
			d++
		case c == ']' || c == '}':
			d--
		case c == '#':
			return d
		}
	}
	return d
}

// misindented returns the first line (1-based) indented deeper than its
// block without opening one, or dedented to a level no enclosing block
// has; 0 when there is none. Blank lines, comments, flow collections and
// the content of block scalars (| and >) are passed over.
func misindented(lines []string) int {
	levels := []int{0}
	opens := false // the previous line ends in "key:" or "-": a block may start
	scalar := -1   // inside a block scalar: lines indented deeper than this
	flow := 0      // depth of open [ and { of flow collections
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		inFlow := flow > 0
		flow += flowDepth(t)
		if inFlow {
			continue
		}
		ind := len(l) - len(strings.TrimLeft(l, " "))
		if scalar >= 0 {
			if ind > scalar {
				continue
			}
			scalar = -1
		}
		top := levels[len(levels)-1]
		switch {
		case ind > top:
			if !opens {
				return i + 1
			}
			levels = append(levels, ind)
		case ind < top:
			for len(levels) > 0 && levels[len(levels)-1] > ind {
				levels = levels[:len(levels)-1]
			}
			if len(levels) == 0 || levels[len(levels)-1] != ind {
				return i + 1
			}
		}
		body := strings.TrimSpace(strings.SplitN(t, " #", 2)[0])
		opens = strings.HasSuffix(body, ":") || body == "-"
		// "- content": the item's content is a block at the column after
		// the dash (a mapping's further keys line up there).
		for strings.HasPrefix(body, "- ") {
			rest := strings.TrimLeft(body[1:], " ")
			ind += len(body) - len(rest)
			levels = append(levels, ind)
			body = rest
		}
		for _, s := range []string{"|", ">", "|-", ">-", "|+", ">+"} {
			if strings.HasSuffix(body, ": "+s) || body == "- "+s {
				scalar = ind
			}
		}
	}
	return 0
}
