//! `headers`: add, set, rename and remove request and response headers from the route's config.

use serde::Deserialize;
use wasmgate_sdk::header_edits::HeaderEdits;
use wasmgate_sdk::{Action, Context, Error, Filter, Needs, Request, Response, export_filter};

/// The filter's config: edits for the request (sent upstream) and the response (sent to the
/// client), each applied in the order remove, rename, set, add.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request: HeaderEdits,
    #[serde(default)]
    pub response: HeaderEdits,
}

pub struct HeadersFilter(Config);

impl Filter for HeadersFilter {
    type Config = Config;
    // Nothing is kept between requests: `self` is only the parsed config.
    fn new(config: Config) -> Result<Self, Error> {
        config.request.validate("request")?;
        config.response.validate("response")?;
        Ok(Self(config))
    }

    /// A side without edits is not called at all. Response edits that only set and add are
    /// made from the request phase (the gateway applies them to the response): one call per
    /// request instead of two.
    fn needs(&self) -> Needs {
        let (request, response) = (&self.0.request, &self.0.response);
        let early = !response.is_empty() && response.only_writes();
        Needs {
            request_phase: !request.is_empty() || early,
            response_phase: !response.is_empty() && !early,
            reuse_instance: true,
            ..Needs::default()
        }
    }

    fn on_request(&self, mut req: Request, ctx: &Context) -> Result<Action, Error> {
        self.0.request.apply(req.headers_mut());
        if self.0.response.only_writes() {
            self.0.response.apply_for_response(ctx);
        }
        Ok(req.into())
    }

    fn on_response(&self, mut resp: Response, _ctx: &Context) -> Result<Response, Error> {
        self.0.response.apply(resp.headers_mut());
        Ok(resp)
    }
}

export_filter!(HeadersFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> Result<HeadersFilter, Error> {
        HeadersFilter::new(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn a_side_without_edits_is_not_called() {
        let needs = |json| filter(json).unwrap().needs();
        let request_only = needs(r#"{"request": {"set": {"x-a": "1"}}}"#);
        assert!(request_only.request_phase && !request_only.response_phase);
        let response_only = needs(r#"{"response": {"remove": ["server"]}}"#);
        assert!(!response_only.request_phase && response_only.response_phase);
    }

    #[test]
    fn response_sets_and_adds_are_made_from_the_request_phase() {
        let f = filter(r#"{"response": {"set": {"x-served-by": "gw"}, "add": {"vary": "x-t"}}}"#)
            .unwrap();
        let needs = f.needs();
        assert!(needs.request_phase && !needs.response_phase);
        let ctx = Context::default();
        f.on_request(Request::new("GET", "/"), &ctx).unwrap();
        let mut resp = Response::new(200)
            .with_header("x-served-by", "upstream")
            .with_header("vary", "accept");
        ctx.apply_response_headers(&mut resp);
        assert_eq!(resp.header("x-served-by"), Some("gw"));
        let vary: Vec<_> = resp.headers().get_all("vary").collect();
        assert_eq!(vary, [b"accept".as_slice(), b"x-t".as_slice()]);
    }

    #[test]
    fn request_edits_apply_in_order_remove_set_add() {
        let f = filter(
            r#"{"request": {"remove": ["x-drop"], "set": {"x-set": "new"}, "add": {"x-add": "2"}}}"#,
        )
        .unwrap();
        let req = Request::new("GET", "/")
            .with_header("x-drop", "gone")
            .with_header("x-set", "old")
            .with_header("x-add", "1");
        let Action::Continue(req) = f.on_request(req, &Context::default()).unwrap() else {
            panic!("headers filter never answers early");
        };
        assert!(!req.headers().contains("x-drop"));
        assert_eq!(req.header("x-set"), Some("new"));
        let added: Vec<_> = req.headers().get_all("x-add").collect();
        assert_eq!(added, [b"1".as_slice(), b"2".as_slice()]);
    }

    #[test]
    fn response_edits_touch_only_the_response() {
        let f = filter(r#"{"response": {"remove": ["server"], "set": {"x-powered-by": "gw"}}}"#)
            .unwrap();
        let resp = f
            .on_response(
                Response::new(200).with_header("server", "upstream/1.0"),
                &Context::default(),
            )
            .unwrap();
        assert_eq!(resp.header("x-powered-by"), Some("gw"));
        assert!(!resp.headers().contains("server"));
    }

    #[test]
    fn bad_names_and_values_are_rejected() {
        assert!(filter(r#"{"request": {"set": {"bad name": "v"}}}"#).is_err());
        assert!(filter(r#"{"response": {"add": {"x-a": "v\r\nx-b: smuggled"}}}"#).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"requets": {}}"#).is_err());
    }
}
