package audit

import (
	"crypto/ecdsa"
	"fmt"
	"strconv"

	"github.com/konsult/konsult/provisioning/identity"
)

// Problem kinds, the first thing wrong with a chain.
const (
	Edited    = "edited"    // a record's content does not match its signature
	Deleted   = "deleted"   // records are missing from the chain
	Reordered = "reordered" // a record is not where its seq puts it
	Inserted  = "inserted"  // a record the unit did not write, or a second copy
	NoKey     = "no_key"    // no chain start or checkpoint that names a key this unit owns
	NoStart   = "no_start"  // the chain begins with neither its first record nor a checkpoint that covers what went before
)

// Problem is the first bad record.
type Problem struct {
	Kind string `json:"kind"`
	// Seq is the record's seq (for Deleted: the first one missing).
	Seq uint64 `json:"seq"`
	// Index is its position in the input (0-based; -1 if it is missing).
	Index   int    `json:"index"`
	Message string `json:"message"`
}

func (p *Problem) Error() string { return p.Message }

// Result is what Verify found about one chain.
type Result struct {
	Chain  string `json:"chain"`
	Device string `json:"device"` // the device id the chain's key makes
	// First and Last are the seqs verified (First > 1 after a prune,
	// covered by a checkpoint).
	First   uint64 `json:"first"`
	Last    uint64 `json:"last"`
	Records int    `json:"records"`
	// LastHash is the hash of record Last.
	LastHash string `json:"last_hash"`
	// Pruned is how many records before First a checkpoint accounts for.
	Pruned  uint64   `json:"pruned"`
	Problem *Problem `json:"problem,omitempty"`
}

// OK says the chain verified.
func (r Result) OK() bool { return r.Problem == nil }

// Verify checks one chain, in the order given: every record signed by the
// unit's key, seqs consecutive, each Prev the hash of the record before,
// and a start that is either the chain's first record or one a checkpoint
// covers. device, if set, must be the device id of the chain's key (a
// unit's id is the hash of its key). It stops at the first bad record and
// names it.
func Verify(recs []Record, device string) Result {
	res := Result{Device: device}
	if len(recs) == 0 {
		res.Problem = &Problem{Kind: Deleted, Seq: 1, Index: -1, Message: "the log holds no records"}
		return res
	}
	res.Chain = recs[0].Chain
	pub, dev, err := chainKey(recs, device)
	if err != nil {
		res.Problem = &Problem{Kind: NoKey, Index: -1, Message: err.Error()}
		if recs[0].Seq > 1 {
			res.Problem = &Problem{Kind: Deleted, Seq: 1, Index: -1,
				Message: fmt.Sprintf("records before seq %d are missing, with the chain's start and every checkpoint: deleted (%s)", recs[0].Seq, err)}
		}
		return res
	}
	res.Device = dev
	sigOK := func(i int) bool { return recs[i].Chain == res.Chain && recs[i].VerifySig(pub) }

	// The start.
	first := recs[0]
	if !sigOK(0) {
		res.Problem = badSig(recs, 0, "", sigOK)
		return res
	}
	if first.Seq != 1 || first.Prev != "" {
		cp := findCheckpoint(recs, first.Seq-1, first.Prev, pub, res.Chain)
		if cp == nil {
			res.Problem = &Problem{Kind: Deleted, Seq: 1, Index: -1,
				Message: fmt.Sprintf("records before seq %d are missing and no checkpoint of the unit's accounts for them (deleted from the front)", first.Seq)}
			if first.Seq == 1 {
				res.Problem = &Problem{Kind: Edited, Seq: 1, Index: 0, Message: "record 1 names a previous record: edited"}
			}
			return res
		}
		res.Pruned = first.Seq - 1
	} else if first.Kind != KindChainStarted {
		res.Problem = &Problem{Kind: Edited, Seq: 1, Index: 0, Message: "record 1 is not the chain's start: edited"}
		return res
	}
	res.First, res.Last, res.LastHash, res.Records = first.Seq, first.Seq, first.Hash(), 1

	for i := 1; i < len(recs); i++ {
		r := recs[i]
		if !sigOK(i) {
			res.Problem = badSig(recs, i, res.LastHash, sigOK)
			return res
		}
		want := res.Last + 1
		switch {
		case r.Seq == want && r.Prev == res.LastHash:
			res.Last, res.LastHash = r.Seq, r.Hash()
			res.Records++
			continue
		case r.Seq == want:
			// Signed by the unit, in place, but not after the record
			// before it: the one before was swapped in.
			res.Problem = &Problem{Kind: Inserted, Seq: res.Last, Index: i - 1,
				Message: fmt.Sprintf("record %d does not follow the record at position %d: that record (seq %d) is a copy or from elsewhere: inserted", r.Seq, i-1, res.Last)}
		case r.Seq <= res.Last:
			if r.Hash() == recs[indexOfSeq(recs[:i], r.Seq)].Hash() {
				res.Problem = &Problem{Kind: Inserted, Seq: r.Seq, Index: i,
					Message: fmt.Sprintf("record %d appears a second time at position %d: inserted (a copy)", r.Seq, i)}
			} else {
				res.Problem = &Problem{Kind: Reordered, Seq: r.Seq, Index: i,
					Message: fmt.Sprintf("record %d comes after record %d: reordered", r.Seq, res.Last)}
			}
		default: // r.Seq > want
			if j := indexOfSeq(recs[i+1:], want); j >= 0 {
				res.Problem = &Problem{Kind: Reordered, Seq: want, Index: i + 1 + j,
					Message: fmt.Sprintf("record %d is at position %d, after record %d: reordered", want, i+1+j, r.Seq)}
			} else {
				res.Problem = &Problem{Kind: Deleted, Seq: want, Index: -1,
					Message: fmt.Sprintf("%s missing between %d and %d: deleted", seqRange(want, r.Seq-1), res.Last, r.Seq)}
			}
		}
		return res
	}
	return res
}

// badSig names a record whose signature fails: inserted if the chain
// goes on around it (the next record follows the one before it), edited
// otherwise.
func badSig(recs []Record, i int, prevHash string, sigOK func(int) bool) *Problem {
	r := recs[i]
	if i+1 < len(recs) && sigOK(i+1) && recs[i+1].Prev == prevHash {
		return &Problem{Kind: Inserted, Seq: r.Seq, Index: i,
			Message: fmt.Sprintf("the record at position %d (it claims seq %d) is not signed by the unit and the chain skips it: inserted", i, r.Seq)}
	}
	if r.Chain != recs[0].Chain && i > 0 {
		return &Problem{Kind: Inserted, Seq: r.Seq, Index: i,
			Message: fmt.Sprintf("the record at position %d belongs to another chain: inserted", i)}
	}
	return &Problem{Kind: Edited, Seq: r.Seq, Index: i,
		Message: fmt.Sprintf("record %d (position %d) does not match the unit's signature: edited", r.Seq, i)}
}

func indexOfSeq(recs []Record, seq uint64) int {
	for i, r := range recs {
		if r.Seq == seq {
			return i
		}
	}
	return -1
}

func seqRange(a, b uint64) string {
	if a == b {
		return "record " + strconv.FormatUint(a, 10) + " is"
	}
	return fmt.Sprintf("records %d to %d are", a, b)
}

// chainKey finds the unit's key: the first chain start or checkpoint
// whose key signs it, bound to device if given.
func chainKey(recs []Record, device string) (*ecdsa.PublicKey, string, error) {
	for _, r := range recs {
		if r.Kind != KindChainStarted && r.Kind != KindCheckpoint {
			continue
		}
		pub, err := DecodeKey(r.Fields["key"])
		if err != nil || !r.VerifySig(pub) {
			continue
		}
		dev, err := identity.DeviceID(pub)
		if err != nil {
			continue
		}
		if device != "" && dev != device {
			return nil, "", fmt.Errorf("the chain's key is not unit %s's (it makes device id %s): the log was replaced", device, dev)
		}
		return pub, dev, nil
	}
	return nil, "", fmt.Errorf("no record names a key that signed it (chain start or checkpoint): the log cannot be verified")
}

func findCheckpoint(recs []Record, through uint64, hash string, pub *ecdsa.PublicKey, chain string) *Record {
	want := strconv.FormatUint(through, 10)
	for i := range recs {
		r := recs[i]
		if r.Kind == KindCheckpoint && r.Chain == chain && r.Fields["pruned_through"] == want && r.Fields["pruned_hash"] == hash && r.VerifySig(pub) {
			return &recs[i]
		}
	}
	return nil
}

// Gap is what the unit says it wrote and the fleet does not hold.
type Gap struct {
	From, To uint64
}

// Gaps compares what the fleet holds of a chain (seqs, any order) with
// the unit's high-water mark (its reported seq): every missing range up
// to it, from first (the first seq the fleet should hold, 1 normally).
func Gaps(held []uint64, first, reported uint64) []Gap {
	have := make(map[uint64]bool, len(held))
	for _, s := range held {
		have[s] = true
	}
	var out []Gap
	for s := first; s <= reported; s++ {
		if have[s] {
			continue
		}
		g := Gap{From: s}
		for s <= reported && !have[s] {
			s++
		}
		g.To = s - 1
		out = append(out, g)
	}
	return out
}
