//! Version 2 of the tag test filter.

const VERSION: &str = "v2";

include!("../../tag.rs");
