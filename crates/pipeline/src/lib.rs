//! Streaming orchestration of aesthete: shards in, scores and filtered shards out.
#![deny(missing_docs)]
