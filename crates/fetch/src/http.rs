//! `http(s)://` module urls: a timeout per attempt and bounded retries with backoff, for
//! connection failures and server errors only (a 404 will not get better).

use std::time::Duration;

use crate::{FetchError, Options};

pub(crate) async fn download(options: &Options, url: &str) -> Result<Vec<u8>, FetchError> {
    let remote = |message: String| FetchError::Remote {
        url: url.into(),
        message,
    };
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .map_err(|e| remote(e.to_string()))?;
    let mut attempt = 0;
    loop {
        let message = match client.get(url).send().await {
            Ok(response) if response.status().is_success() => {
                return response
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| remote(format!("reading the body: {e}")));
            }
            Ok(response) if response.status().is_server_error() => {
                format!("HTTP {}", response.status())
            }
            Ok(response) => return Err(remote(format!("HTTP {}", response.status()))),
            Err(error) => describe(&error),
        };
        if attempt >= options.retries {
            return Err(remote(format!(
                "{message} (after {} attempts)",
                attempt + 1
            )));
        }
        attempt += 1;
        tracing::warn!(url, attempt, "download failed: {message}; retrying");
        tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt.min(5))).await;
    }
}

/// A reqwest error with its causes, which say what actually failed (refused, timed out, TLS).
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
