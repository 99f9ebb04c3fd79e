package main

import (
	"github.com/BurntSushi/toml"

	"github.com/konsult/konsult/appliance/config"
)

// The schema, defaults, merge and validation live in appliance/config;
// these names keep roomd's call sites short.
type (
	Config      = config.Config
	FleetConfig = config.Fleet
	Duration    = config.Duration
	localConfig = config.Local
)

var defaultConfig = config.Default

func loadConfig(path string) (*Config, error) { return config.Load(path) }

func readLocal(path string) (localConfig, error) { return config.ReadLocal(path) }

func decodeStrict(text string, c *Config) (toml.MetaData, error) {
	return config.DecodeStrict(text, c)
}
