package stack

// StopXDS stops the xDS server (the agent going away); Envoy keeps running
// with what it has.
func (s *Stack) StopXDS() {
	if s.stopXDS != nil {
		s.stopXDS()
	}
}
