package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const updateBase = `
state_dir: /var/lib/vigil
control: {endpoints: ["https://etcd:2379"]}
server: {url: "https://vigil:8443"}
`

func TestUpdateSection(t *testing.T) {
	c, err := Parse(strings.NewReader(updateBase + "update: {trust_file: /etc/vigil/trust.json}\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := c.UpdateSettings()
	if u.Dir != filepath.Join("/var/lib/vigil", "plugins") || u.HealthWindow != 30*time.Second || u.Keep != 1 ||
		u.Attempts != DefaultUpdateAttempts || u.SpreadWindow != 0 || u.KeyringRefresh != DefaultKeyringRefresh {
		t.Errorf("defaults: %+v", u)
	}
	if (Config{}).UpdateSettings() != nil {
		t.Error("no section must give nil settings")
	}

	for _, tc := range []struct{ doc, want string }{
		{updateBase + "update: {}\n", "update.trust_file, or update.roots_file and update.keyring_file"},
		{updateBase + "update: {trust_file: a, roots_file: b, keyring_file: c}\n", "not both"},
		{updateBase + "update: {roots_file: b}\n", `keyring_file ""`},
		{updateBase + "update: {trust_file: t, health_window: 2h}\n", "update.health_window must be between 100ms and 1h (got 2h0m0s)"},
		{updateBase + "update: {trust_file: t, keep: 50}\n", "update.keep must be between 1 and 20 (got 50)"},
		{updateBase + "update: {trust_file: t, dir: rel}\n", `update.dir must be an absolute path (got "rel")`},
		{updateBase + "update: {trust_file: t, spread_window: -1s}\n", "update.spread_window"},
		{updateBase + "update: {trust_file: t, keyring_refresh: 48h}\n", "update.keyring_refresh must be between 1s and 24h (got 48h0m0s)"},
		{updateBase + "update: {trust_file: t, colour: red}\n", "colour"},
		{"server: {url: \"https://v\"}\nupdate: {trust_file: t}\n", "update needs the control section"},
	} {
		_, err := Parse(strings.NewReader(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to contain %q", tc.doc, err, tc.want)
		}
	}
}
