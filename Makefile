# Vigil — build, test, run, bench, lint.
#   make run    build everything and start a local server (embedded etcd) and a host with its plugins
#   make test   install-free test run: vet, lint, unit and end-to-end tests (run as root for netlink/cgroups)

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/vigil-hids/vigil/internal/version.Version=$(VERSION)
GOFLAGS_B := -trimpath -ldflags '$(LDFLAGS)'
BIN       := bin

# Every binary: cmd/* plus each plugin's cmd/*.
CMDS := $(sort $(dir $(filter-out plugins/testplugin/cmd/badcookie/% plugins/testplugin/cmd/garbage/% plugins/testplugin/cmd/oldapi/%,$(wildcard cmd/*/main.go plugins/*/cmd/*/main.go))))

.PHONY: all build test test-short run bench bench-scale lint fuzz proto clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_B) -o $(BIN)/ $(addprefix ./,$(CMDS))

test: lint
	$(GO) test -count=1 -timeout 30m ./...

test-short:
	$(GO) test -count=1 -short ./...

run: build
	./scripts/run.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./sdk/... ./host/...

# Control plane at scale on a 3-member etcd cell: JSON reports and scale.html (docs/scale.md).
bench-scale:
	./bench/scale/run.sh

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	./scripts/check-imports.sh

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeConfig -fuzztime 30s ./sdk
	$(GO) test -run '^$$' -fuzz FuzzParseEvent -fuzztime 30s ./sdk
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./host/config
	$(GO) test -run '^$$' -fuzz FuzzDecodeUpload -fuzztime 30s ./vuln/ingest
	$(GO) test -run '^$$' -fuzz FuzzParseState -fuzztime 30s ./host/selfupdate
	$(GO) test -run '^$$' -fuzz FuzzLoadState -fuzztime 30s ./host/update
	$(GO) test -run '^$$' -fuzz FuzzRangeStart -fuzztime 30s ./host/update

# Regenerate the plugin protocol (needs protoc, protoc-gen-go, protoc-gen-go-grpc).
proto:
	protoc --go_out=. --go_opt=module=github.com/vigil-hids/vigil \
	       --go-grpc_out=. --go-grpc_opt=module=github.com/vigil-hids/vigil \
	       sdk/pluginpb/plugin.proto

clean:
	rm -rf $(BIN) run
