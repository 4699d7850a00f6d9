// Package templates holds mas4h's embedded text templates: the slave's
// sshd_config, the authorized_keys line the hook prints, and later the shell
// client and the dashboard. Keeping them as files (not Go strings) lets an
// operator read exactly what mas4h generates.
package templates

import (
	"embed"
	"fmt"
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
