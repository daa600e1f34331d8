//! FastAGI wire format (stub; being written).
