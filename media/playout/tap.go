package playout

// tap hands the mix just given to the device to Config.OnMix: the echo
// canceller's reference must be what the room hears, after mixing and
// clipping, not the remote tracks.
func (p *Player) tap(mix []float32) {
	if p.cfg.OnMix != nil {
		p.cfg.OnMix(mix)
	}
}
