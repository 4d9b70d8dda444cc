//! WebSocket upgrades are tunnelled to the target.

use futures_util::{SinkExt, StreamExt};
use portico_test_support::Backend;
use tokio_tungstenite::tungstenite::Message;

use crate::portico;

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let echo = Backend::websocket_echo().await;
    let p = portico(&[]);
    p.add_host("ws.example.test", echo.addr, &[]);
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let url = format!("ws://ws.example.test:{}/socket", p.http.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade through the proxy");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
    }
    let blob: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_to_unknown_host_is_refused() {
    let p = portico(&[]);
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let url = format!("ws://nobody.test:{}/socket", p.http.port());
    let err = tokio_tungstenite::client_async(url, stream).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 404),
        other => panic!("expected an HTTP 404, got {other}"),
    }
}

/// A tunnel that carries nothing either way for `proxy.tunnel_idle_timeout` is closed.
#[tokio::test]
async fn idle_tunnels_are_closed() {
    let echo = Backend::websocket_echo().await;
    let p = portico(&["proxy.tunnel_idle_timeout=\"1s\""]);
    p.add_host("ws.example.test", echo.addr, &[]);
    let stream = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let url = format!("ws://ws.example.test:{}/socket", p.http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("upgrade through the proxy");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    // Then silence: the proxy closes the tunnel, which ends the client's stream.
    let ended =
        tokio::time::timeout(std::time::Duration::from_secs(15), async { while let Some(Ok(_)) = ws.next().await {} })
            .await;
    assert!(ended.is_ok(), "the idle tunnel stayed open");
}
