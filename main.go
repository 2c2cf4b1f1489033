// Command tally is Tally's single binary; `tally help` lists its commands.
package main

import (
	"context"
	"os"

	"github.com/tally-dev/tally/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}
