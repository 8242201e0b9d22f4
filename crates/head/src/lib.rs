//! The LAION improved aesthetic predictor head on candle-nn.
#![deny(missing_docs)]
