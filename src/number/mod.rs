//! Caller-ID normalization (stub; being written).
