//! Compatibility with the real `async-openai` client.

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    FinishReason,
};
use async_openai::Client;
use futures::StreamExt;
use mock_openai::{demo_reply, MockConfig, MockServer};

use crate::common::*;

fn openai(server: &MockServer) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(format!("http://{}/v1", server.addr()))
        .with_api_key("test");
    Client::with_config(config)
}

fn request(user: &str, stream: bool) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model("gpt-4o-mini").stream(stream).messages([
        ChatCompletionRequestSystemMessageArgs::default()
            .content("You are helpful.")
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content(user)
            .build()
            .unwrap()
            .into(),
    ]);
    if stream {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        });
    }
    args.build().unwrap()
}

#[tokio::test]
async fn async_openai_streams_the_demo_reply() {
    let server = start(MockConfig {
        api_key: Some("test".into()),
        ..MockConfig::fast()
    })
    .await;
    let client = openai(&server);
    let mut stream = client
        .chat()
        .create_stream(request("Hello from async-openai", true))
        .await
        .expect("stream opens");
    let (mut content, mut finish, mut usage, mut ids, mut chunks) =
        (String::new(), None, None, Vec::new(), 0);
    while let Some(item) = stream.next().await {
        let chunk = item.expect("every chunk parses");
        chunks += 1;
        ids.push(chunk.id.clone());
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert_eq!(chunk.model, "gpt-4o-mini");
        if let Some(choice) = chunk.choices.first() {
            content.push_str(choice.delta.content.as_deref().unwrap_or(""));
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
        if let Some(u) = chunk.usage {
            usage = Some(u);
        }
    }
    assert_eq!(content, demo_reply("Hello from async-openai"));
    assert_eq!(finish, Some(FinishReason::Stop));
    let usage = usage.expect("final usage chunk");
    // role chunk + tokens + finish chunk + usage chunk
    assert_eq!(usage.completion_tokens as usize + 3, chunks);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(wait_stats(&server, |s| s.completed == 1).await.aborted, 0);
}

#[tokio::test]
async fn async_openai_non_streaming_and_max_tokens() {
    let server = start(MockConfig::fast()).await;
    let client = openai(&server);
    let resp = client
        .chat()
        .create(request("[[mock tokens=5]]", false))
        .await
        .expect("completion");
    assert_eq!(
        resp.choices[0].message.content.as_deref(),
        Some("w1 w2 w3 w4 w5")
    );
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(resp.usage.expect("usage").completion_tokens, 5);

    let mut req = request("[[mock tokens=50]]", true);
    req.max_completion_tokens = Some(4);
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut finish = None;
    let mut content = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(c) = chunk.choices.first() {
            content.push_str(c.delta.content.as_deref().unwrap_or(""));
            finish = c.finish_reason.or(finish);
        }
    }
    assert_eq!(content, "w1 w2 w3 w4 ");
    assert_eq!(finish, Some(FinishReason::Length));
}

#[tokio::test]
async fn async_openai_sees_failures() {
    let server = start(MockConfig::fast()).await;
    let client = openai(&server);

    match client
        .chat()
        .create(request("[[mock status=429]]", false))
        .await
    {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 429);
            assert_eq!(e.api_error.code.as_deref(), Some("rate_limit_exceeded"));
        }
        other => panic!("expected 429 ApiError, got {other:?}"),
    }

    for directive in ["[[mock cut=2 tokens=9]]", "[[mock stream_error tokens=9]]"] {
        let mut stream = client
            .chat()
            .create_stream(request(directive, true))
            .await
            .expect("200 stream opens");
        let mut content = String::new();
        let mut failed = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    let c = chunk.choices.first().expect("content chunk");
                    assert!(c.finish_reason.is_none(), "{directive}: no finish");
                    content.push_str(c.delta.content.as_deref().unwrap_or(""));
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "{directive}: the client must see an error");
        assert_eq!(content, "w1 w2 ", "{directive}");
    }
    let stats = wait_stats(&server, |s| s.cut == 1 && s.stream_errors == 1).await;
    assert_eq!(stats.completed, 0);
}
