package testkit

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"testing"
)

// plistToJSON is run by python3: the property list on stdin, strictly
// parsed by plistlib (XML format only, as launchd's files are), as JSON.
const plistToJSON = `import json, plistlib, sys
d = plistlib.loads(sys.stdin.buffer.read(), fmt=plistlib.FMT_XML)
json.dump(d, sys.stdout)
`

// Plist parses an XML property list with Python's plistlib, the reference
// reader at hand without a Mac, and returns its top-level dict (JSON
// numbers are float64). A list plistlib refuses fails the test. Without
// python3 the test is skipped, or fails when MAS4H_E2E is set.
func Plist(t testing.TB, data []byte) map[string]any {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set: python3 is needed to parse property lists")
		}
		t.Skip("python3 is not installed")
	}
	cmd := exec.Command(py, "-c", plistToJSON)
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("plistlib refuses the property list: %v: %s\n%s", err, stderr.Bytes(), data)
	}
	var d map[string]any
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("plistlib's top level is not a dict: %v: %s", err, out)
	}
	return d
}
