package foundation_test

import "github.com/envoyproxy/go-control-plane/pkg/cache/types"

type typesResource = types.Resource
