# Tally's entry points. `make run` and `make test` are all a fresh machine
# needs (PostgreSQL on 127.0.0.1:5432, Go from the module proxy).

GO      ?= go
PKGS    ?= ./...
BENCHTIME ?= 1x
BENCHCOUNT ?= 5

.PHONY: run test build lint fuzz bench check-deploy

## run: Tally on its embedded default (kfake broker + API + relay), see README
run:
	$(GO) run . dev

## test: every test, with the race detector, against real PostgreSQL and kfake over TCP
## (-count=1: results depend on the database and broker, so they are never cached)
test:
	$(GO) test -race -count=1 -timeout 9m $(PKGS)

## build: the tally binary
build:
	$(GO) build -trimpath -o tally .

## lint: gofmt and go vet
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt would change the files above"; exit 1; }
	$(GO) vet $(PKGS)

## fuzz: a short fuzzing pass over every decoder (set FUZZTIME for longer)
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./internal/envelope -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./internal/money -run '^$$' -fuzz FuzzParseDecimal -fuzztime $(FUZZTIME)
	$(GO) test ./producers/importer -run '^$$' -fuzz FuzzDecodeRow -fuzztime $(FUZZTIME)
	$(GO) test ./producers/importer -run '^$$' -fuzz FuzzParseAmount -fuzztime $(FUZZTIME)
	$(GO) test ./internal/mail -run '^$$' -fuzz FuzzCompose -fuzztime $(FUZZTIME)
	$(GO) test ./topics -run '^$$' -fuzz FuzzFastCheckAgrees -fuzztime $(FUZZTIME)

## bench: the speed targets; prints `BENCH <name> <value> <unit>` lines (median of BENCHCOUNT runs)
bench:
	$(GO) run . bench -count $(BENCHCOUNT)

## check-deploy: static checks of the compose file, Prometheus rules, dashboard and manifests
check-deploy:
	bash deploy/check.sh
