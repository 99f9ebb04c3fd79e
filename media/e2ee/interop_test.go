package e2ee

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Fixed vectors made by livekit-client 2.23.0's own E2EE worker under Node
// (testdata/lkworker.mjs gen, K = 00..1f).
type vector struct {
	Codec string `json:"codec"`
	Type  string `json:"type"`
	Data  string `json:"data"`
	LK    string `json:"lk"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadVectors(t *testing.T) []vector {
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Key    string   `json:"key"`
		Frames []vector `json:"frames"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.Key != hex.EncodeToString(material()) || len(v.Frames) < 8 {
		t.Fatalf("vectors: key %q, %d frames", v.Key, len(v.Frames))
	}
	return v.Frames
}

// checkWorkerFrame: Go decrypts the worker's frame to the plain frame (as a
// receiver rebuilds it), and Go's encryption with the worker's IV is the
// worker's frame byte for byte.
func checkWorkerFrame(t *testing.T, k *Key, i int, codec string, plain, lk []byte) {
	t.Helper()
	dec, err := k.Decrypt(codec, lk)
	if err != nil {
		t.Fatalf("frame %d (%s): Go cannot decrypt the worker's frame: %v", i, codec, err)
	}
	want := plain
	if codec == "h264" {
		h, rest, err := h264SendHeader(plain)
		if err != nil {
			t.Fatal(err)
		}
		want = append(append([]byte(nil), h...), rest...)
	}
	if !bytes.Equal(dec, want) {
		t.Fatalf("frame %d (%s): decrypted frame differs from the plain frame", i, codec)
	}
	raw := lk
	if codec == "h264" {
		n, _ := h264RecvHeader(lk)
		raw = append(append([]byte(nil), lk[:n]...), parseRbsp(lk[n:])...)
	}
	iv := raw[len(raw)-2-ivLength : len(raw)-2]
	mine, err := k.encrypt(codec, plain, iv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mine, lk) {
		t.Fatalf("frame %d (%s): Go's encryption differs from the worker's with the same IV", i, codec)
	}
}

func TestLiveKitWorkerVectors(t *testing.T) {
	k, _ := NewKey(material())
	for i, v := range loadVectors(t) {
		checkWorkerFrame(t, k, i, v.Codec, unhex(t, v.Data), unhex(t, v.LK))
	}
}

func workerPath(t *testing.T) (node, worker string) {
	t.Helper()
	missing := func(why string) {
		if os.Getenv("KONSULT_REQUIRE_REAL_PARTS") == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node not on PATH")
	}
	worker = os.Getenv("KONSULT_LIVEKIT_E2EE_WORKER")
	if worker == "" {
		worker, _ = filepath.Abs("../../.cache/npm/node_modules/livekit-client/dist/livekit-client.e2ee.worker.mjs")
	}
	if _, err := os.Stat(worker); err != nil {
		missing("livekit-client E2EE worker not found (.cache/npm; .ci/setup installs it)")
	}
	return node, worker
}

type wframe struct {
	Codec string `json:"codec"`
	Type  string `json:"type"`
	Data  string `json:"data"`
}

func runWorker(t *testing.T, key []byte, decrypt, encrypt []wframe) (dec, enc []*string, errs int) {
	t.Helper()
	node, worker := workerPath(t)
	req, _ := json.Marshal(map[string]any{"key": hex.EncodeToString(key), "decrypt": decrypt, "encrypt": encrypt})
	cmd := exec.Command(node, "testdata/lkworker.mjs", worker, "run")
	cmd.Stdin = bytes.NewReader(req)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("worker: %v: %s", err, stderr.Bytes())
	}
	var res struct {
		Decrypted []*string `json:"decrypted"`
		Encrypted []*string `json:"encrypted"`
		Errors    int       `json:"errors"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("worker output: %v", err)
	}
	return res.Decrypted, res.Encrypted, res.Errors
}

// The live cross-check: livekit-client's worker decrypts what Go encrypts
// now (random IVs), Go decrypts what the worker encrypts now, and a worker
// with another key decrypts nothing and reports it.
func TestLiveKitWorkerLive(t *testing.T) {
	k, _ := NewKey(material())
	vs := loadVectors(t)
	var goEnc, plain []wframe
	for _, v := range vs {
		e, err := k.Encrypt(v.Codec, unhex(t, v.Data))
		if err != nil {
			t.Fatal(err)
		}
		goEnc = append(goEnc, wframe{v.Codec, v.Type, hex.EncodeToString(e)})
		plain = append(plain, wframe{v.Codec, v.Type, v.Data})
	}
	dec, enc, errs := runWorker(t, material(), goEnc, plain)
	if errs != 0 {
		t.Errorf("worker reported %d errors with the right key", errs)
	}
	for i, v := range vs {
		if dec[i] == nil {
			t.Fatalf("frame %d (%s): the worker did not decrypt Go's frame", i, v.Codec)
		}
		want, _ := k.Decrypt(v.Codec, unhex(t, goEnc[i].Data))
		if got := unhex(t, *dec[i]); !bytes.Equal(got, want) {
			t.Fatalf("frame %d (%s): the worker decrypted Go's frame to other bytes", i, v.Codec)
		}
		if enc[i] == nil {
			t.Fatalf("frame %d: the worker did not encrypt", i)
		}
		checkWorkerFrame(t, k, i, v.Codec, unhex(t, v.Data), unhex(t, *enc[i]))
	}

	wrong := material()
	wrong[5] ^= 0x40
	dec, _, errs = runWorker(t, wrong, goEnc, nil)
	for i := range dec {
		if dec[i] != nil {
			t.Fatalf("frame %d: a worker with another key passed a frame on", i)
		}
	}
	if errs == 0 {
		t.Fatal("a worker with another key reported no decryption error")
	}
}
