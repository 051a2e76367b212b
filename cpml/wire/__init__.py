"""The wire layer: generated protobuf code (generated/) and serde, the only code that touches it."""
