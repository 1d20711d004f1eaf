//! Who is looking, and as whom the fleet is read.
//!
//! - `kubeconfig` (the default, as `kubectl proxy` and Headlamp's desktop
//!   mode): one person, the caller of `fleetforge ui`; every watch and
//!   write is made with their kubeconfig's credentials. Served on loopback
//!   only, and only to loopback host names, so that no other machine and
//!   no web page through DNS rebinding borrows that identity.
//! - `token` (in a cluster): each request carries a bearer token (an
//!   `Authorization` header from a proxy in front, or the cookie the login
//!   form sets). The API server says whose it is (TokenReview) and whether
//!   they may use the fleet view (SubjectAccessReview on `get` of
//!   `ui.fleetforge.dev`); then their fleet is read with their own token,
//!   so they see exactly what `kubectl get` would show them. No token, no
//!   page: there is no anonymous access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::cache::Fleet;

/// The cookie the login form sets in token mode.
pub const TOKEN_COOKIE: &str = "fleetforge_token";
/// How long a token's review is trusted before it is asked again.
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// A person's watches stop after this long with no page open.
const IDLE: Duration = Duration::from_secs(15 * 60);
/// At most this many people's watches at once; the least recently used
/// goes first.
const MAX_SESSIONS: usize = 200;

/// How people are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// The caller's kubeconfig identity, on loopback only.
    Kubeconfig,
    /// A bearer token per request, checked with TokenReview and
    /// SubjectAccessReview; reads made with that token.
    Token,
}

/// A refusal, as the response to send.
#[derive(Debug)]
pub struct Refusal {
    /// 401 (who are you?) or 403 (not you).
    pub status: StatusCode,
    /// Why, for people.
    pub message: String,
}

/// A person's fleet and who they are.
#[derive(Debug, Clone)]
pub struct Session {
    /// Their fleet.
    pub fleet: Arc<Fleet>,
    /// Their user name, if known.
    pub user: Option<String>,
    /// Where the identity came from, for the header.
    pub source: String,
}

#[derive(Debug)]
struct TokenSession {
    session: Session,
    reviewed: Instant,
    used: Instant,
}

/// Every person's fleet.
#[derive(Debug)]
pub enum Sessions {
    /// One person: the caller.
    Kubeconfig(Session),
    /// Each token its own.
    Token(Box<TokenSessions>),
}

/// The token mode's state.
pub struct TokenSessions {
    /// The server's own client: it asks the reviews.
    reviewer: Client,
    /// The server's configuration, whose credentials each person's
    /// client replaces with their token.
    base: kube::Config,
    scopes: Vec<Option<String>>,
    sessions: Mutex<HashMap<String, TokenSession>>,
}

impl TokenSessions {
    /// Token mode with the server's own `config`, watching `scopes`.
    pub fn new(config: kube::Config, scopes: Vec<Option<String>>) -> Result<Self, kube::Error> {
        Ok(Self {
            reviewer: Client::try_from(config.clone())?,
            base: config,
            scopes,
            sessions: Mutex::new(HashMap::new()),
        })
    }
}

impl std::fmt::Debug for TokenSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("TokenSessions")
            .field("scopes", &self.scopes)
            .field(
                "sessions",
                &self.sessions.lock().map(|s| s.len()).unwrap_or_default(),
            )
            .finish_non_exhaustive()
    }
}

/// The bearer token of a request: its `Authorization` header, else the
/// login cookie.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        let token = token.trim();
        if !token.is_empty() {
            return Some(token.to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| !v.is_empty())
}

impl Sessions {
    /// The session of the request with `headers`.
    pub async fn session(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        match self {
            Sessions::Kubeconfig(session) => Ok(session.clone()),
            Sessions::Token(tokens) => tokens.session(headers).await,
        }
    }

    /// Whether people are identified by token.
    pub fn is_token(&self) -> bool {
        matches!(self, Sessions::Token(_))
    }
}

impl TokenSessions {
    async fn session(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        let Some(token) = token_of(headers) else {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "Sign in with a Kubernetes bearer token (kubectl create token NAME)."
                    .into(),
            });
        };
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let now = Instant::now();
            sessions.retain(|_, s| now.duration_since(s.used) < IDLE);
            if let Some(found) = sessions.get_mut(&token)
                && now.duration_since(found.reviewed) < REVIEW_TTL
            {
                found.used = now;
                return Ok(found.session.clone());
            }
        }
        let user = self.review(&token).await?;
        let mut config = self.base.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        };
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        if let Some(found) = sessions.get_mut(&token) {
            found.reviewed = now;
            found.used = now;
            return Ok(found.session.clone());
        }
        let client = Client::try_from(config).map_err(|e| Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("building a client for {user}: {e}"),
        })?;
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        let session = Session {
            fleet: Arc::new(Fleet::start(client, Some(user.clone()), &self.scopes)),
            user: Some(user),
            source: "bearer token".into(),
        };
        sessions.insert(
            token,
            TokenSession {
                session: session.clone(),
                reviewed: now,
                used: now,
            },
        );
        Ok(session)
    }

    /// Whose token it is (TokenReview), and whether they may use the
    /// fleet view (SubjectAccessReview).
    async fn review(&self, token: &str) -> Result<String, Refusal> {
        let internal = |what: &str, e: kube::Error| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("could not {what}: {e}"),
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.reviewer.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| internal("review the token", e))?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "The API server does not accept this token.".into(),
            });
        };
        let username = user.username.clone().unwrap_or_default();
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(fleetforge_api::GROUP.into()),
                    resource: Some("ui".into()),
                    verb: Some("get".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.reviewer.clone())
            .create(&PostParams::default(), &access)
            .await
            .map_err(|e| internal("check access", e))?;
        if decided.status.is_some_and(|s| s.allowed) {
            Ok(username)
        } else {
            Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "{username} may not use the fleet view: it needs get on ui.fleetforge.dev (the chart's ClusterRole fleetforge-ui-user)."
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_come_from_the_header_or_the_login_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_of(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; fleetforge_token=from-cookie"),
        );
        assert_eq!(token_of(&headers).as_deref(), Some("from-cookie"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        assert_eq!(token_of(&headers).as_deref(), Some("from-header"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(token_of(&headers).as_deref(), Some("from-cookie"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("fleetforge_token="),
        );
        assert_eq!(token_of(&headers), None);
    }
}
