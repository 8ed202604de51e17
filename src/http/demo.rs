//! `GET /demo`: a page that shows the broker at work in a browser. Two tabs
//! join a room and open a WebRTC connection to each other through the
//! native door (`/ws`), a data channel and a test-pattern video track, and
//! list the signaling messages as they pass; the tabs may sit on two nodes
//! of a cluster. The page, its script and style (`src/assets/demo/`) and the
//! browser client it uses (`clients/js/switchboard.js`, also served here
//! as `/demo/switchboard.js` so a developer can import it straight from a
//! node) are compiled into the binary: no build step, no CDN.
//!
//! Open, like `/ws` itself: the page holds nothing the node would not tell
//! any WebSocket client, and it connects as an ordinary peer (so
//! `auth.anonymous` or a token decides whether it may). Each answer carries
//! a Content-Security-Policy that allows only the node's own scripts and
//! styles, so nothing a peer sends can run as script even if the page
//! mishandled it.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The page.
const INDEX_HTML: &str = include_str!("../assets/demo/index.html");
/// The page's script (WebRTC and the log).
const DEMO_JS: &str = include_str!("../assets/demo/demo.js");
/// The page's style.
const DEMO_CSS: &str = include_str!("../assets/demo/demo.css");
/// The browser client, an ES module (clients/js).
const CLIENT_JS: &str = include_str!("../../clients/js/switchboard.js");

/// Scripts, styles and media from the node only; WebSockets to any node (a
/// cluster's other nodes are the reconnect targets); no frames, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self' ws: wss:; img-src 'self' data:; media-src 'self' blob: mediastream:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// `/demo`, `/demo/` and the page's assets.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo", get(|| asset(HTML, INDEX_HTML)))
        .route("/demo/", get(|| asset(HTML, INDEX_HTML)))
        .route("/demo/demo.js", get(|| asset(JS, DEMO_JS)))
        .route("/demo/demo.css", get(|| asset(CSS, DEMO_CSS)))
        .route("/demo/switchboard.js", get(client_module))
}

/// The client module, importable from pages of any origin (a module script
/// from another origin needs CORS): it is public code, the same for all.
async fn client_module() -> impl IntoResponse {
    (
        [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        asset(JS, CLIENT_JS).await,
    )
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Assets change with the binary; a browser revalidates each time.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_assets_from_the_routes_served_here() {
        for path in ["/demo/demo.js", "/demo/demo.css"] {
            assert!(INDEX_HTML.contains(path), "index.html must load {path}");
        }
        assert!(DEMO_JS.contains(r#"from "/demo/switchboard.js""#));
        assert!(CLIENT_JS.contains("export class SwitchboardClient"));
    }
}
