// Package templates holds mas4h's embedded text templates: the slave's
// sshd_config, the authorized_keys line the hook prints, the shell client
// and the master's HTML dashboard. Keeping them as files (not Go strings) lets an
// operator read exactly what mas4h generates.
package templates

import (
	"embed"
	"fmt"
	htmltemplate "html/template"
	"text/template"
)

//go:embed *.tmpl
var files embed.FS

// Parse returns the named embedded template, parsed once per call. The
// templates are tiny; callers that render in a hot path keep the result.
func Parse(name string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").ParseFS(files, name)
	if err != nil {
		return nil, fmt.Errorf("parsing embedded template %s: %w", name, err)
	}
	return t, nil
}

// MustParse is Parse for package-level variables: a broken embedded template
// is a build defect, caught by the first test that touches it.
func MustParse(name string) *template.Template {
	t, err := Parse(name)
	if err != nil {
		panic(err)
	}
	return t
}

// ParseHTML parses the named embedded files as one html/template set (for
// the master's dashboard: every value is escaped for where it lands), with
// funcs available to all of them. The first name is the set's name.
func ParseHTML(funcs htmltemplate.FuncMap, names ...string) (*htmltemplate.Template, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("parsing embedded HTML templates: no names")
	}
	t, err := htmltemplate.New(names[0]).Option("missingkey=error").Funcs(funcs).ParseFS(files, names...)
	if err != nil {
		return nil, fmt.Errorf("parsing embedded templates %v: %w", names, err)
	}
	return t, nil
}
