package agent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
)

// Dropbear's private key files are SSH wire encoding with no header:
//
//	ssh-ed25519:          string "ssh-ed25519", string (seed[32] || public[32])
//	ssh-rsa:              string "ssh-rsa", mpint e, n, d, p, q
//	ecdsa-sha2-nistpNNN:  string name, string "nistpNNN", string Q (uncompressed), mpint d
//
// The agent reads and writes them itself so that a device needs neither
// dropbearconvert nor ssh-keygen to use either client with one key.

var errNotDropbear = errors.New("not a dropbear key")

type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) bytes() []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < 4 {
		r.err = errors.New("truncated")
		return nil
	}
	n := binary.BigEndian.Uint32(r.b)
	if uint64(n) > uint64(len(r.b)-4) {
		r.err = errors.New("truncated")
		return nil
	}
	v := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return v
}

func (r *wireReader) mpint() *big.Int {
	v := r.bytes()
	if r.err != nil {
		return nil
	}
	if len(v) > 0 && v[0]&0x80 != 0 {
		r.err = errors.New("negative integer")
		return nil
	}
	return new(big.Int).SetBytes(v)
}

var dropbearCurves = map[string]elliptic.Curve{
	"nistp256": elliptic.P256(), "nistp384": elliptic.P384(), "nistp521": elliptic.P521(),
}

func parseDropbear(data []byte) (crypto.Signer, error) {
	r := &wireReader{b: data}
	typ := string(r.bytes())
	if r.err != nil {
		return nil, errNotDropbear
	}
	switch typ {
	case "ssh-ed25519":
		v := r.bytes()
		if r.err != nil || len(v) != ed25519.PrivateKeySize {
			return nil, errors.New("its ed25519 key is malformed")
		}
		k := ed25519.NewKeyFromSeed(v[:ed25519.SeedSize])
		if string(k[ed25519.SeedSize:]) != string(v[ed25519.SeedSize:]) {
			return nil, errors.New("its ed25519 public half does not match the private one")
		}
		return k, nil
	case "ssh-rsa":
		e, n, d, p, q := r.mpint(), r.mpint(), r.mpint(), r.mpint(), r.mpint()
		if r.err != nil || !e.IsInt64() {
			return nil, errors.New("its rsa key is malformed")
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: int(e.Int64())}, D: d, Primes: []*big.Int{p, q}}
		if err := k.Validate(); err != nil {
			return nil, fmt.Errorf("its rsa key is invalid: %v", err)
		}
		k.Precompute()
		return k, nil
	case "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521":
		curveName := string(r.bytes())
		q := r.bytes()
		d := r.mpint()
		curve, ok := dropbearCurves[curveName]
		if r.err != nil || !ok || "ecdsa-sha2-"+curveName != typ {
			return nil, errors.New("its ecdsa key is malformed")
		}
		k, err := ecdsa.ParseRawPrivateKey(curve, d.FillBytes(make([]byte, (curve.Params().BitSize+7)/8)))
		if err != nil {
			return nil, fmt.Errorf("its ecdsa key is invalid: %v", err)
		}
		pub, err := k.PublicKey.Bytes()
		if err != nil || string(pub) != string(q) {
			return nil, errors.New("its ecdsa public point does not match the private key")
		}
		return k, nil
	default:
		return nil, errNotDropbear
	}
}

type wireWriter []byte

func (w *wireWriter) bytes(v []byte) {
	*w = binary.BigEndian.AppendUint32(*w, uint32(len(v)))
	*w = append(*w, v...)
}

func (w *wireWriter) mpint(v *big.Int) {
	b := v.Bytes()
	if len(b) > 0 && b[0]&0x80 != 0 {
		b = append([]byte{0}, b...)
	}
	w.bytes(b)
}

func marshalDropbear(s crypto.Signer) ([]byte, error) {
	var w wireWriter
	switch k := s.(type) {
	case ed25519.PrivateKey:
		w.bytes([]byte("ssh-ed25519"))
		w.bytes(k)
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return nil, errors.New("dropbear supports two-prime rsa keys only")
		}
		w.bytes([]byte("ssh-rsa"))
		w.mpint(big.NewInt(int64(k.E)))
		w.mpint(k.N)
		w.mpint(k.D)
		w.mpint(k.Primes[0])
		w.mpint(k.Primes[1])
	case *ecdsa.PrivateKey:
		var name string
		for n, c := range dropbearCurves {
			if c == k.Curve {
				name = n
			}
		}
		if name == "" {
			return nil, fmt.Errorf("dropbear does not support ecdsa curve %s", k.Curve.Params().Name)
		}
		pub, err := k.PublicKey.Bytes()
		if err != nil {
			return nil, err
		}
		priv, err := k.Bytes()
		if err != nil {
			return nil, err
		}
		w.bytes([]byte("ecdsa-sha2-" + name))
		w.bytes([]byte(name))
		w.bytes(pub)
		w.mpint(new(big.Int).SetBytes(priv))
	default:
		return nil, fmt.Errorf("cannot write a %T key in dropbear format", s)
	}
	return w, nil
}
