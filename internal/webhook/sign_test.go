package webhook_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tally-dev/tally/internal/webhook"
)

// The Standard Webhooks specification's test vector.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

var vectorTime = time.Unix(1614265330, 0)

func TestSignVector(t *testing.T) {
	got, err := webhook.Sign(vectorID, vectorTime, []byte(vectorBody), vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got != vectorSignature {
		t.Errorf("signature %q, want %q", got, vectorSignature)
	}
}

func TestSignRotation(t *testing.T) {
	fresh := webhook.NewSecret()
	got, err := webhook.Sign(vectorID, vectorTime, []byte(vectorBody), fresh, vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	sigs := strings.Split(got, " ")
	if len(sigs) != 2 || sigs[1] != vectorSignature || !strings.HasPrefix(sigs[0], "v1,") || sigs[0] == sigs[1] {
		t.Errorf("signature during a rotation %q; want the new secret's, then the old one's %q", got, vectorSignature)
	}
	alone, _ := webhook.Sign(vectorID, vectorTime, []byte(vectorBody), fresh)
	if alone != sigs[0] {
		t.Errorf("the new secret signs %q alone and %q beside the old one", alone, sigs[0])
	}
}

func TestSecrets(t *testing.T) {
	s := webhook.NewSecret()
	if !strings.HasPrefix(s, "whsec_") || webhook.CheckSecret(s) != nil || s == webhook.NewSecret() {
		t.Errorf("NewSecret made %q", s)
	}
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!", "whsec_c2hvcnQ="} {
		if webhook.CheckSecret(bad) == nil {
			t.Errorf("secret %q accepted", bad)
		}
		if _, err := webhook.Sign("id", vectorTime, nil, bad); err == nil {
			t.Errorf("signed with secret %q", bad)
		}
	}
}
