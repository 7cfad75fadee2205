"""Generated gRPC stubs of the styletx API (scripts/gen_proto.sh)."""
