//! `Sec-WebSocket-Extensions` header grammar (RFC 6455 §9.1):
//! `name *( ";" param [ "=" (token | quoted-string) ] )`, several separated by commas.

/// One extension offer or response: its name and parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// Extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters with optional values (quotes removed).
    pub params: Vec<(String, Option<String>)>,
}

/// Parse one header value into its offers. Malformed elements are returned as `Err` so that the
/// caller can reject the handshake (client) or ignore the element (server).
pub fn parse(value: &str) -> Vec<Result<ExtensionOffer, ()>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|elem| {
            let mut parts = split_outside_quotes(elem, ';').into_iter();
            let name = parts.next().unwrap_or("").trim();
            if !is_token(name) {
                return Err(());
            }
            let mut params = Vec::new();
            for p in parts {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                    None => (p.trim(), None),
                };
                if !is_token(k) {
                    return Err(());
                }
                params.push((k.to_ascii_lowercase(), v));
            }
            Ok(ExtensionOffer { name: name.to_ascii_lowercase(), params })
        })
        .collect()
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn unquote(v: &str) -> Result<String, ()> {
    let inner = match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').ok_or(())?,
        None => v,
    };
    if !is_token(inner) {
        return Err(());
    }
    Ok(inner.to_owned())
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offers_with_params_and_quotes() {
        let v = parse("permessage-deflate; client_max_window_bits; server_max_window_bits=\"10\", x-foo");
        assert_eq!(v.len(), 2);
        let first = v[0].as_ref().unwrap();
        assert_eq!(first.name, "permessage-deflate");
        assert_eq!(
            first.params,
            vec![("client_max_window_bits".into(), None), ("server_max_window_bits".into(), Some("10".into()))]
        );
        assert_eq!(v[1].as_ref().unwrap().name, "x-foo");
    }

    #[test]
    fn malformed_elements_are_errors() {
        assert!(parse("permessage-deflate; a=\"unterminated")[0].is_err());
        assert!(parse("bad name")[0].is_err());
        assert!(parse(" ; x")[0].is_err());
    }
}
