//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, kept by hand beside the
//! code (`openapi.json`) and checked here against [`super::catalog::ROUTES`] both ways, and
//! against a live gateway by Schemathesis (`make api-test`).
//!
//! `/ws`, `/healthz`, `/readyz`, `/metrics` and `/openapi.json` itself are in the document
//! too: it lists every route the gateway serves except the web client's files.

use warp::http::StatusCode;
use warp::reply::Response;

use super::errors::json_response;

/// The document, exactly as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    json_response(StatusCode::OK, DOCUMENT)
}

/// The document's operations as `(METHOD, template)`, templates with `:name` parameters
/// like the catalog's (`{id}` → `:id`).
pub fn operations(doc: &serde_json::Value) -> Vec<(String, String)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        return out;
    };
    for (path, item) in paths {
        let template = path
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => format!(":{name}"),
                    None => s.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        for m in METHODS {
            if item.get(m).is_some() {
                out.push((m.to_ascii_uppercase(), template.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::rest::catalog::ROUTES;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).unwrap_or_else(|e| panic!("openapi.json is not JSON: {e}"))
    }

    #[test]
    fn the_document_lists_exactly_the_served_routes() {
        let documented: BTreeSet<(String, String)> = operations(&doc()).into_iter().collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect();
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty(),
            "served but not in openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "in openapi.json but not served (catalog::ROUTES): {extra:?}"
        );
        assert_eq!(documented.len(), ROUTES.len(), "ROUTES holds a duplicate");
    }

    /// Every `$ref` in the document points at something that exists.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, root: &Value, bad: &mut Vec<String>) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let target = r
                            .strip_prefix('#')
                            .and_then(|pointer| root.pointer(pointer));
                        if target.is_none() {
                            bad.push(r.clone());
                        }
                    }
                    map.values().for_each(|v| walk(v, root, bad));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, root, bad)),
                _ => {}
            }
        }
        let d = doc();
        let mut bad = Vec::new();
        walk(&d, &d, &mut bad);
        assert!(bad.is_empty(), "dangling $ref: {bad:?}");
    }

    /// OpenAPI 3.1; every operation has a unique operationId, a security requirement and
    /// documented responses; path parameters are declared.
    #[test]
    fn every_operation_is_complete() {
        let d = doc();
        assert_eq!(d["openapi"], "3.1.0");
        assert!(d.pointer("/components/securitySchemes/bearer").is_some());
        let mut ids = BTreeSet::new();
        for (path, item) in d["paths"].as_object().into_iter().flatten() {
            let declared: BTreeSet<String> = item["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let p = match p.get("$ref").and_then(Value::as_str) {
                        Some(r) => d.pointer(r.trim_start_matches('#'))?,
                        None => p,
                    };
                    (p["in"] == "path").then(|| p["name"].as_str().map(str::to_string))?
                })
                .collect();
            let wanted: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            assert_eq!(declared, wanted, "path parameters of {path}");
            for (method, op) in item.as_object().into_iter().flatten() {
                if method == "parameters" {
                    continue;
                }
                let id = op["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                assert!(ids.insert(id.to_string()), "operationId {id} repeats");
                assert!(op["security"].is_array(), "{method} {path} has no security");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} has no responses"
                );
            }
        }
    }

    #[test]
    fn parameters_become_catalog_templates() {
        let d = serde_json::json!({"paths": {"/a/{id}/b/{messageId}": {"get": {}, "delete": {}}}});
        let mut ops = operations(&d);
        ops.sort();
        assert_eq!(
            ops,
            [
                ("DELETE".to_string(), "/a/:id/b/:messageId".to_string()),
                ("GET".to_string(), "/a/:id/b/:messageId".to_string())
            ]
        );
    }
}
