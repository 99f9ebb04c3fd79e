package livekit

import (
	"context"
	"fmt"
	"time"
)

// sourceTimeout bounds one call of Config.TokenSource. The source is meant
// to answer from a token it fetched before the press (a fleet unit
// prefetches one while idle); this only stops a join waiting forever on a
// fleet service that is gone.
const sourceTimeout = 10 * time.Second

// sourcedToken asks Config.TokenSource for the join's token. The room is
// the token's: a unit whose tokens come from its fleet service enters the
// room the service chose, whatever Config.Room says.
func (c *base) sourcedToken() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sourceTimeout)
	defer cancel()
	tok, err := c.cfg.TokenSource(ctx)
	if err != nil {
		return "", fmt.Errorf("conference token: %w", err)
	}
	return tok, nil
}
