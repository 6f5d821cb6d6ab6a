// Package docs is ward's user's guide: the Markdown pages of this
// directory. It has no code; its tests execute the guide, so that it stays
// true to the code:
//
//   - every YAML or JSON block carries a tag after its language: a block
//     tagged node-config loads with agent.LoadConfig, one tagged endpoint
//     (an endpointsDir file) decodes strictly and validates, one tagged
//     policy parses with policy.Parse, without error;
//   - every field of the node configuration and every wardd flag is in
//     node-config.md, and its dns defaults are filters/dns's;
//   - run-without-kubernetes.md is run for real: its `sh walkthrough`
//     blocks, in order, with its file blocks (tagged file=PATH) written
//     where they say, in a private network, mount and PID namespace; a
//     line ending in "# => TEXT" must print TEXT;
//   - policy-from-verdicts.md, then troubleshooting.md on the same node,
//     run the same way (blocks tagged cleanup run last).
package docs
