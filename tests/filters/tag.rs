// Shared by tag-v1 and tag-v2: the same filter in two versions, told apart by the response header
// `x-filter-version`. Used by the hot-reload tests.

use wasmgate_sdk::{Context, Error, Filter, NoConfig, Response, export_filter};

struct Tag;

impl Filter for Tag {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, Error> {
        Ok(Tag)
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        resp.set_header("x-filter-version", VERSION);
        Ok(resp)
    }
}

export_filter!(Tag);
