package fleet

import (
	"bytes"
	"reflect"
	"testing"
)

func FuzzParseEnvelope(f *testing.F) {
	priv := testKey(f, 1)
	f.Add(signConfig(f, priv, configPayload()))
	f.Add([]byte(`{"payload":"e30=","key_id":"0011223344556677","sig":""}`))
	f.Add([]byte(`{"payload":"e30=","payload":"e30="}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := ParseEnvelope(data)
		if err != nil {
			if ReasonOf(err) != ReasonMalformed {
				t.Fatalf("parse error without the malformed reason: %v", err)
			}
			return
		}
		// What parses must survive a round trip unchanged.
		again, err := ParseEnvelope(env.Marshal())
		if err != nil || !reflect.DeepEqual(env, again) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzVerifyConfig feeds arbitrary envelopes to the verifier (it must never
// panic, and anything it accepts must be the one validly signed config), and
// flips bits of a valid envelope: no single-byte change may verify.
func FuzzVerifyConfig(f *testing.F) {
	priv := testKey(f, 1)
	v := testVerifier(f, priv)
	valid := signConfig(f, priv, configPayload())
	validEnv, err := ParseEnvelope(valid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid, uint32(0), byte(1))
	f.Add(valid, uint32(20), byte(0x20))
	f.Add([]byte("{}"), uint32(len(valid)-3), byte(0x80))
	f.Fuzz(func(t *testing.T, data []byte, pos uint32, flip byte) {
		if c, err := v.VerifyConfig(data, nil, nil); err == nil {
			env, _ := ParseEnvelope(data)
			if !reflect.DeepEqual(env, validEnv) || c.Version != 3 {
				t.Fatalf("accepted an envelope that is not the signed one: %q", data)
			}
		} else if ReasonOf(err) == "" {
			t.Fatalf("refusal without a reason: %v", err)
		}

		if flip == 0 {
			return
		}
		m := bytes.Clone(valid)
		m[int(pos)%len(m)] ^= flip
		if _, err := v.VerifyConfig(m, nil, nil); err == nil {
			t.Fatalf("byte %d ^ %#x still verifies: %s", int(pos)%len(m), flip, m)
		}
	})
}

// FuzzMergeConfig merges arbitrary TOML: never a panic, and when both layers
// are TOML the merge succeeds and gives TOML that keeps every key the upper
// layer set at the top level.
func FuzzMergeConfig(f *testing.F) {
	f.Add([]byte("[a]\nx = 1\n"), []byte("[a]\ny = [1, 2]\n"))
	f.Add([]byte("a = {b = {c = 1979-05-27T07:32:00Z}}\n"), []byte("[[a.d]]\ne = 1.5\n"))
	f.Add([]byte("t = 07:32:00\nd = 1979-05-27\nl = 1979-05-27T07:32:00\n"), []byte("x = [[1], ['a'], {k = nan}]\n"))
	f.Add([]byte("\"quoted key\" = 'v'\n[\"a.b\".c]\nd = -inf\n"), []byte("[x]\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		out, err := Merge(a, b)
		_, errA := ParseTOML(a)
		top, errB := ParseTOML(b)
		if errA != nil || errB != nil {
			if err == nil {
				t.Fatal("merge of invalid TOML succeeded")
			}
			return
		}
		if err != nil {
			t.Fatalf("merge of valid TOML failed: %v", err)
		}
		got, err := ParseTOML(out)
		if err != nil {
			t.Fatalf("merge result is not TOML: %v\n%s", err, out)
		}
		for k := range top {
			if _, ok := got[k]; !ok {
				t.Fatalf("key %q of the upper layer is missing from the result", k)
			}
		}
	})
}
