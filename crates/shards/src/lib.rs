//! WebDataset tar shard reading and writing: streaming, size limits, atomic output.
#![deny(missing_docs)]
