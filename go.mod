module github.com/konsult/konsult

go 1.26

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/pion/mediadevices v0.9.4
	periph.io/x/conn/v3 v3.7.3
	periph.io/x/host/v3 v3.8.5
	pgregory.net/rapid v1.3.0
)

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/jonboulle/clockwork v0.5.0 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/image v0.23.0 // indirect
)
