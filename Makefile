# Konsult room unit. `make run` and `make test` are the README's two commands.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)
CACHE   := $(CURDIR)/.cache
export PATH := $(CACHE)/bin:$(PATH)

.PHONY: run run-offline test setup bench lint build clean lab deb image image-amd64 image-test bundle update-key update-test

## run: the simulated room unit in a local LiveKit conference, with a page to be the patient
run:
	@bash .ci/builddeps
	@SKIP_CHROMIUM=1 bash .ci/farend-setup.sh
	@GO=$(GO) bash .ci/demo

## run-offline: the simulated unit alone, built-in defaults, local simulated conference
run-offline:
	@bash .ci/builddeps
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/roomd --sim

## setup: install what the tests need (apt packages, LiveKit, livekit-client, linters)
setup:
	bash .ci/setup

## test: set up, then the whole suite with the race detector; real parts are required.
## The far-end echo judgments run again without it (internal/raceflag: under -race
## the audio runs several times slower than on any unit).
## media/livekit runs alone after the rest: its calls are judged at a real
## Chromium far end through a real LiveKit, and on a 2-core machine another
## package's test binary beside it starved them past their 1 s bounds (CI at
## 9374ef2: the WHIP slate and the encrypted MUTE; both pass alone).
## The echo judgments run one package at a time (-p 1) for the same reason:
## with cmd/roomd's echo call beside it, the canceller at the far end
## converged to 21 dB instead of 36-42 (CI at 78927b2).
test: setup
	KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/media/livekit$$')
	KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -race -count=1 -timeout 20m ./media/livekit
	KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -p 1 -count=1 -timeout 10m -run 'TestFarEndEchoCancelled|TestFarEndDoubleTalk|TestRoomdCancelsTheRoomsEcho' ./media/livekit ./cmd/roomd

## bench: the benchmarks, printed as a table (raw output in .cache/bench.txt); ~3 min
bench:
	@mkdir -p $(CACHE)
	@{ $(GO) test -run '^$$' -bench . -benchtime 20x ./cmd/... && \
	   $(GO) test -run '^$$' -bench . -benchtime 200x ./hal/... ./media/gate/...; } > $(CACHE)/bench.txt 2>&1 || { cat $(CACHE)/bench.txt; exit 1; }
	@awk '/^pkg:/ {pkg=$$2} /^Benchmark/ { \
	    line=sprintf("%-58s %12s ns/op", $$1, $$3); \
	    for (i=5; i<NF; i+=2) line=line sprintf("  %s %s", $$i, $$(i+1)); \
	    print line }' $(CACHE)/bench.txt

## lab: the QEMU hardware lab (Debian's kernel, vivid, snd-aloop, gpio-sim, vicodec; roomd inside); ~3-5 min, root
# Up to two more runs, only when the guest's ICE to LiveKit through QEMU's
# user network failed (image/lab: iceFlakeMarker; about 1 run in 4), an open
# lab problem, not the unit's. Every run's output is printed.
lab: setup
	@mkdir -p .cache; for try in 1 2 3; do \
	  KONSULT_LAB=1 KONSULT_REQUIRE_REAL_PARTS=1 $(GO) test -count=1 -timeout 15m -v -run '^TestLab$$' ./image/lab/ >.cache/lab-run.log 2>&1; \
	  rc=$$?; cat .cache/lab-run.log; \
	  if [ $$rc -eq 0 ] || ! grep -q LAB-ICE-THROUGH-SLIRP-FAILED .cache/lab-run.log; then exit $$rc; fi; \
	  echo "make lab: run $$try: the guest's ICE through QEMU's user network failed (known open lab problem)"; \
	done; exit 1

## lint: gofmt, go vet, staticcheck
lint: setup
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vaapi ./media/encoder/   # the VAAPI backend (libva-dev): compiled, though no GPU runs it here
	staticcheck ./...

## build: roomd and roomctl for linux/amd64 and linux/arm64 into bin/
build:
	for arch in amd64 arm64; do \
	  for cmd in roomd roomctl; do \
	    CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/linux-$$arch/$$cmd ./cmd/$$cmd || exit 1; \
	  done; \
	done
	@ls -l bin/linux-*/

## deb: Debian packages (konsult, konsult-fleetctl) for amd64 and arm64 into dist/; ~5 min
deb:
	bash packaging/build-deb amd64 dist
	bash packaging/build-deb arm64 dist

## image: Raspberry Pi 4 image (Debian arm64 + raspi-firmware + konsult) into dist/; root, ~20 min
image:
	bash packaging/build-deb arm64 dist
	bash image/build arm64 "$$(ls -t dist/konsult_*_arm64.deb | head -n1)" dist/konsult-rpi4-arm64.img

## image-amd64: the same system for amd64 (what the boot test boots)
image-amd64:
	bash packaging/build-deb amd64 dist
	bash image/build amd64 "$$(ls -t dist/konsult_*_amd64.deb | head -n1)" dist/konsult-amd64.img

## bundle: a signed RAUC update bundle (docs/UPDATES.md) from the same amd64 image build into dist/; root
## (KONSULT_IMAGE_VERSION sets the version; keys from image/update-key, default .cache/update-keys)
bundle: image-amd64
	bash image/bundle dist/konsult-amd64.rootfs.ext4 amd64 "$$(cat dist/konsult-amd64.version)" dist/konsult-amd64.raucb

## update-key: the fleet's update signing CA and signer into .cache/update-keys (image/update-key rotate for a new signer)
update-key:
	bash image/update-key init $(CACHE)/update-keys

## image-test: boot the amd64 image under QEMU (TCG) in a loopback-only netns; root, ~5-10 min
image-test: image-amd64
	bash image/setup-host boottest
	KONSULT_BOOT_TEST=1 KONSULT_IMAGE=$(CURDIR)/dist/konsult-amd64.img KONSULT_BOOT_RESULT=$(CURDIR)/dist/boottest.txt \
	  $(GO) test -count=1 -timeout 40m -v -run TestImageBoots ./image/boottest/

## update-test: the QEMU update test (docs/UPDATES.md: v1 -> v2 marked good, bad bundles refused, v3 falls back); root, ~40 min; not in .ci/run
update-test: setup image-amd64
	bash image/setup-host boottest
	KONSULT_REQUIRE_REAL_PARTS=1 KONSULT_UPDATE_TEST=1 KONSULT_IMAGE=$(CURDIR)/dist/konsult-amd64.img KONSULT_UPDATE_RESULT=$(CURDIR)/dist/updatetest.txt \
	  $(GO) test -count=1 -timeout 90m -v -run '^TestUpdate$$' ./image/boottest/

clean:
	rm -rf bin
