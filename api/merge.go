package api

import (
	"bytes"
	"encoding/json"
	"sort"
)

// Merge returns the effective desired state of layers given from the widest
// to the narrowest scope: fleet, then the groups in GroupScopes order, then
// the host. A field a layer leaves unset inherits from the layers before it.
// Plugin configs that are JSON objects on both sides merge key by key,
// recursively; any other config (array, string, number, null, invalid JSON)
// replaces the wider one. Tasks are the union of every layer's tasks by ID,
// in order of first appearance; a narrower layer's task replaces a wider one
// with the same ID. The result shares no maps, slices or bytes with the
// layers.
func Merge(layers ...DesiredState) DesiredState {
	var out DesiredState
	taskAt := map[string]int{}
	for _, l := range layers {
		if l.Stop != nil {
			v := *l.Stop
			out.Stop = &v
		}
		if l.LogLevel != "" {
			out.LogLevel = l.LogLevel
		}
		for name, p := range l.Plugins {
			if out.Plugins == nil {
				out.Plugins = map[string]PluginState{}
			}
			out.Plugins[name] = mergePlugin(out.Plugins[name], p)
		}
		if l.HostVersion != "" {
			out.HostVersion = l.HostVersion
			out.HostRollout = cloneRollout(l.HostRollout)
		}
		for _, t := range l.Tasks {
			t.Args = cloneRaw(t.Args)
			if i, ok := taskAt[t.ID]; ok {
				out.Tasks[i] = t
				continue
			}
			taskAt[t.ID] = len(out.Tasks)
			out.Tasks = append(out.Tasks, t)
		}
	}
	return out
}

func mergePlugin(base, over PluginState) PluginState {
	if over.Enabled != nil {
		v := *over.Enabled
		base.Enabled = &v
	}
	if over.Version != "" {
		base.Version = over.Version
		base.Rollout = cloneRollout(over.Rollout)
	} else {
		base.Rollout = cloneRollout(base.Rollout)
	}
	if over.LogLevel != "" {
		base.LogLevel = over.LogLevel
	}
	if len(over.Config) > 0 {
		base.Config = mergeJSON(base.Config, over.Config)
	} else {
		base.Config = cloneRaw(base.Config)
	}
	if len(over.Limits) > 0 {
		base.Limits = mergeJSON(base.Limits, over.Limits)
	} else {
		base.Limits = cloneRaw(base.Limits)
	}
	return base
}

func cloneRollout(r *Rollout) *Rollout {
	if r == nil {
		return nil
	}
	v := *r
	return &v
}

// mergeJSON merges over into base when both are JSON objects, recursively,
// and otherwise returns a copy of over.
func mergeJSON(base, over json.RawMessage) json.RawMessage {
	var b, o map[string]json.RawMessage
	if !isObject(base) || !isObject(over) ||
		json.Unmarshal(base, &b) != nil || json.Unmarshal(over, &o) != nil {
		return cloneRaw(over)
	}
	if b == nil {
		b = map[string]json.RawMessage{}
	}
	for k, v := range o {
		if old, ok := b[k]; ok {
			b[k] = mergeJSON(old, v)
		} else {
			b[k] = v
		}
	}
	out, err := json.Marshal(b)
	if err != nil {
		return cloneRaw(over)
	}
	return out
}

func isObject(raw json.RawMessage) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) > 0 && t[0] == '{'
}

func cloneRaw(raw json.RawMessage) json.RawMessage {
	if raw == nil {
		return nil
	}
	return append(json.RawMessage(nil), raw...)
}

// GroupScopes returns the group scopes of a host's labels in merge order:
// sorted by label, then value. Labels or values that are not ValidName
// cannot name a key and are left out.
func GroupScopes(labels map[string]string) []Scope {
	scopes := make([]Scope, 0, len(labels))
	for k, v := range labels {
		if !ValidName(k) || !ValidName(v) {
			continue
		}
		scopes = append(scopes, Scope{Kind: ScopeGroup, Label: k, Value: v})
	}
	sort.Slice(scopes, func(i, j int) bool {
		if scopes[i].Label != scopes[j].Label {
			return scopes[i].Label < scopes[j].Label
		}
		return scopes[i].Value < scopes[j].Value
	})
	return scopes
}

// HostScopes returns every scope that applies to a host, in merge order:
// fleet, its groups (GroupScopes), then the host itself.
func HostScopes(host string, labels map[string]string) []Scope {
	scopes := []Scope{{Kind: ScopeFleet}}
	scopes = append(scopes, GroupScopes(labels)...)
	return append(scopes, Scope{Kind: ScopeHost, Host: host})
}
