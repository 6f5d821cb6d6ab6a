package flowcheck

import (
	"fmt"

	"github.com/wardproxy/ward/policy"
)

// matchHTTP is wired to filters/http once that package lands.
func (e *evaluator) matchHTTP(h *HTTP, s *policy.L7Selection) (bool, string, error) {
	return false, "", fmt.Errorf("http L7 evaluation is not available: filters/http is not built yet")
}
