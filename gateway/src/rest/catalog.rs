//! Every route the gateway serves, as `(method, template)`: the label of its metrics, and
//! the list the OpenAPI document is checked against.

/// The served routes. Path parameters are `:name` segments.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/conversations"),
    ("GET", "/api/conversations"),
    ("GET", "/api/conversations/:id"),
    ("POST", "/api/conversations/:id/messages"),
    ("DELETE", "/api/conversations/:id/messages/:messageId"),
    ("POST", "/api/conversations/:id/members"),
    ("POST", "/api/conversations/:id/assistant/cancel"),
    ("POST", "/api/users"),
    ("GET", "/api/users"),
    ("POST", "/api/sessions"),
    ("DELETE", "/api/sessions"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/ws"),
];

/// The label for a path no route matches (bounded: never the raw path).
pub const UNMATCHED: &str = "unmatched";
/// The label for the web client's files.
pub const WEB: &str = "web";

/// The template of the route `path` belongs to, whatever the method.
pub fn template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (_, t) in ROUTES {
        let ts: Vec<&str> = t.trim_start_matches('/').split('/').collect();
        if ts.len() == segments.len()
            && ts
                .iter()
                .zip(&segments)
                .all(|(t, s)| (t.starts_with(':') && !s.is_empty()) || t == s)
        {
            return t;
        }
    }
    let first = segments.first().copied().unwrap_or_default();
    if first == "api" || first == "ws" {
        UNMATCHED
    } else {
        WEB
    }
}

/// The `Allow` header of a 405 for `template` (RFC 9110 §15.5.6): the methods it serves.
pub fn allowed(template: &str) -> String {
    if template == WEB {
        return "GET, HEAD".into();
    }
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, t)| *t == template)
        .map(|(m, _)| *m)
        .collect();
    methods.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_every_method_of_a_template() {
        assert_eq!(allowed("/api/conversations"), "POST, GET");
        assert_eq!(allowed("/api/sessions"), "POST, DELETE");
        assert_eq!(allowed("/healthz"), "GET");
        assert_eq!(allowed(WEB), "GET, HEAD");
    }

    #[test]
    fn paths_map_to_their_templates() {
        assert_eq!(template("/api/conversations"), "/api/conversations");
        assert_eq!(
            template("/api/conversations/5d3c0c7e-0000-4000-8000-000000000000/messages/abc"),
            "/api/conversations/:id/messages/:messageId"
        );
        assert_eq!(
            template("/api/conversations/x/assistant/cancel"),
            "/api/conversations/:id/assistant/cancel"
        );
        assert_eq!(template("/api/nope"), UNMATCHED);
        assert_eq!(template("/api/conversations//messages"), UNMATCHED);
        assert_eq!(template("/"), WEB);
        assert_eq!(template("/assets/index-abc.js"), WEB);
        assert_eq!(template("/metrics"), "/metrics");
    }
}
