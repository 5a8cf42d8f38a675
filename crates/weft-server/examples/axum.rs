//! The engine inside an axum application: the app's own routes beside the engine's WebSocket
//! endpoint, and the app publishing events.
//!
//! ```text
//! cargo run -p weft-server --example axum
//! # then: weft client ws://127.0.0.1:3000/ws   and type {"type":"subscribe","topics":["ticks"]}
//! ```

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use weft_server::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::new(EngineConfig::default())?;
    let ws_engine = engine.clone();
    let app = Router::new()
        .route("/", get(|| async { "an axum app with a weft engine at /ws" }))
        .route("/ws", get(move |req: Request| async move { ws_engine.upgrade(req) }));
    // The host application publishes whenever it likes; publishing never waits for subscribers.
    tokio::spawn({
        let engine = engine.clone();
        async move {
            for n in 0u64.. {
                let _ = engine.publish("ticks", serde_json::json!({ "n": n })).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000 (WebSocket at /ws)");
    axum::serve(listener, app).await?;
    Ok(())
}
