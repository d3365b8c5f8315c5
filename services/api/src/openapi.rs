//! The router and its OpenAPI document, built together from the handlers' `#[utoipa::path]`
//! annotations so that they cannot drift apart; `/swagger-ui` serves the UI from the binary.

use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDocument, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::problem::Problem;
use crate::routes::{
    action_logs, api_keys, catalog, deployments, downloads, events, finops, instances, organizations, pools, session,
    users, workers,
};

pub const DOCUMENT_PATH: &str = "/api-docs/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(title = "Quartermaster API", description = "Control plane for GPU and compute fleets across clouds."),
    modifiers(&Security),
    security(("bearer" = []), ("session_cookie" = [])),
    components(schemas(Problem))
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token from POST /auth/login, or an API key (`qm_…`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::SESSION_COOKIE))),
        );
    }
}

/// Finishes each operation: a unique operation id, a description on every response, and the
/// errors every operation can answer (as problem+json) where its annotation does not list them.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut OpenApiDocument) {
        let problem = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        crate::problem::CONTENT_TYPE,
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("Problem"))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in &mut openapi.paths.paths {
            let operations = [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (true, &mut item.patch),
            ];
            for (changes, operation) in operations {
                let Some(operation) = operation else { continue };
                // Handler names repeat across resources (`list`, `get`); ids must be unique.
                if let (Some(tag), Some(id)) =
                    (operation.tags.as_ref().and_then(|tags| tags.first()), &operation.operation_id)
                {
                    operation.operation_id = Some(format!("{tag}_{id}"));
                }
                // Every response needs a description; default to the status's reason phrase.
                for (status, response) in &mut operation.responses.responses {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        let reason =
                            status.parse::<u16>().ok().and_then(|code| axum::http::StatusCode::from_u16(code).ok());
                        response.description =
                            reason.and_then(|code| code.canonical_reason()).unwrap_or("Response").to_owned();
                    }
                }
                // A query or header parameter is absent or text, never JSON `null`; a path
                // parameter is always required.
                for parameter in operation.parameters.iter_mut().flatten() {
                    if let RefOr::T(parameter) = parameter
                        && parameter.parameter_in == utoipa::openapi::path::ParameterIn::Path
                    {
                        parameter.required = utoipa::openapi::Required::True;
                    }
                    if let RefOr::T(parameter) = parameter
                        && let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(schema))) = &mut parameter.schema
                        && let utoipa::openapi::schema::SchemaType::Array(types) = &schema.schema_type
                    {
                        let types: Vec<_> = types
                            .iter()
                            .filter(|kind| **kind != utoipa::openapi::schema::Type::Null)
                            .cloned()
                            .collect();
                        if let [single] = types.as_slice() {
                            schema.schema_type = utoipa::openapi::schema::SchemaType::Type(single.clone());
                        }
                    }
                }
                let public = path == "/auth/login" || path == "/internal/worker/register";
                let anonymous = public || path.starts_with("/downloads/");
                let mut add = |status: &str, description: &str| {
                    operation.responses.responses.entry(status.to_owned()).or_insert_with(|| problem(description));
                };
                if public {
                    add("429", "Too many attempts from this client or for this account; see `Retry-After`");
                }
                add("400", "Malformed request (body, query string or path)");
                if !anonymous {
                    add("401", "Not authenticated, or the session or key expired or was revoked");
                    add(
                        "403",
                        "The caller's role does not allow this, or a cookie-authenticated change came from another site",
                    );
                }
                if path.contains('{') {
                    add("404", "Not found (or in another organization)");
                }
                if changes {
                    add("409", "Conflicts with what exists (a name or address already taken, a state that forbids it)");
                }
                if operation.request_body.is_some() {
                    add("413", "The body is too large");
                    add("415", "The body is not JSON");
                }
                add("422", "Invalid field values; `errors` names them");
                add("500", "Server fault (details are logged, not returned)");
                add("503", "The database is unavailable");
                // Every error an annotation declares with a `Problem` body is problem+json.
                for (status, response) in &mut operation.responses.responses {
                    if let RefOr::T(response) = response
                        && status.starts_with(['4', '5'])
                        && let Some(content) = response.content.shift_remove("application/json")
                    {
                        response.content.insert(crate::problem::CONTENT_TYPE.to_owned(), content);
                    }
                }
            }
        }
    }
}

/// The schema of a provider's name: one of the providers Quartermaster knows.
pub fn provider_name() -> utoipa::openapi::Object {
    provider_names(false)
}

/// [`provider_name`], or `null`.
pub fn optional_provider_name() -> utoipa::openapi::Object {
    provider_names(true)
}

fn provider_names(nullable: bool) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    let mut names: Vec<serde_json::Value> = qm_config::KNOWN_PROVIDERS.map(serde_json::Value::from).to_vec();
    let schema_type = if nullable {
        names.push(serde_json::Value::Null);
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    utoipa::openapi::ObjectBuilder::new().schema_type(schema_type).enum_values(Some(names)).build()
}

/// The routes of the API and the document describing them.
pub fn routes() -> (Router<AppState>, OpenApiDocument) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(session::login))
        .routes(routes!(session::logout))
        .routes(routes!(session::me, session::update_me))
        .routes(routes!(session::change_password))
        .routes(routes!(organizations::list, organizations::create))
        .routes(routes!(organizations::get, organizations::update, organizations::delete))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::get, users::update, users::delete))
        .routes(routes!(api_keys::list, api_keys::create))
        .routes(routes!(api_keys::revoke))
        .routes(routes!(catalog::providers))
        .routes(routes!(catalog::provider, catalog::put_provider))
        .routes(routes!(catalog::regions))
        .routes(routes!(catalog::region, catalog::put_region))
        .routes(routes!(catalog::zones))
        .routes(routes!(catalog::zone, catalog::put_zone))
        .routes(routes!(catalog::zone_instance_types))
        .routes(routes!(catalog::instance_types))
        .routes(routes!(catalog::instance_type, catalog::put_instance_type))
        .routes(routes!(catalog::instance_type_zones, catalog::put_instance_type_zones))
        .routes(routes!(catalog::sync))
        .routes(routes!(deployments::list, deployments::create))
        .routes(routes!(deployments::offers))
        .routes(routes!(deployments::get))
        .routes(routes!(pools::list, pools::create))
        .routes(routes!(pools::get, pools::update, pools::delete))
        .routes(routes!(instances::list))
        .routes(routes!(instances::get, instances::terminate))
        .routes(routes!(instances::archive))
        .routes(routes!(instances::reconcile))
        .routes(routes!(action_logs::list))
        .routes(routes!(action_logs::search))
        .routes(routes!(action_logs::types))
        .routes(routes!(events::stream))
        .routes(routes!(workers::register))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::rotate))
        .routes(routes!(workers::revoke))
        .routes(routes!(workers::get))
        .routes(routes!(finops::summary))
        .routes(routes!(finops::window))
        .routes(routes!(finops::actual))
        .routes(routes!(finops::cumulative))
        .routes(routes!(finops::forecast))
        .routes(routes!(finops::usage))
        .routes(routes!(finops::usage_window))
        .routes(routes!(finops::per_token))
        .routes(routes!(finops::budgets))
        .routes(routes!(finops::budget, finops::put_budget, finops::delete_budget))
        .routes(routes!(finops::exchange_rates))
        .routes(routes!(finops::put_exchange_rate))
        .routes(routes!(downloads::agent))
        .routes(routes!(downloads::agent_checksum))
        .split_for_parts();
    // After the paths are in: the error responses are added to each of them.
    ErrorResponses.modify(&mut document);
    (router, document)
}

/// The OpenAPI document alone (for `qm openapi` and tests).
pub fn document() -> OpenApiDocument {
    routes().1
}

/// The complete API: routes, `/api-docs/openapi.json`, `/swagger-ui`, and problem+json for
/// unknown routes (the standard layers turn the other stray errors into problem+json).
pub fn router(state: AppState) -> Router {
    let (routes, document) = routes();
    routes
        .with_state(state)
        .merge(SwaggerUi::new("/swagger-ui").url(DOCUMENT_PATH, document))
        .merge(crate::console::router())
        .fallback(|| async { Problem::not_found("route") })
        .layer(axum::middleware::from_fn(crate::problem::refuse_nul))
        .layer(axum::middleware::from_fn(crate::auth::cross_site_guard))
}
