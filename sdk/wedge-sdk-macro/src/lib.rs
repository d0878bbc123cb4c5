//! Procedural macros of `wedge-sdk`. Use them through `wedge_sdk` (for
//! example `#[wedge_sdk::http_handler]`), never directly: the code they
//! generate names `::wedge_sdk` paths.

use proc_macro::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, parse_macro_input};

/// Exports a function as the component's `wasi:http/incoming-handler`.
///
/// The function takes one `wedge_sdk::Request` and returns anything that
/// implements `wedge_sdk::IntoResponse`; it may be `async` (it then runs on
/// `wedge_sdk::executor::block_on`). One function per component may carry
/// the attribute.
///
/// ```ignore
/// #[wedge_sdk::http_handler]
/// fn handle(req: wedge_sdk::Request) -> impl wedge_sdk::IntoResponse {
///     "Hello, wedge!\n"
/// }
/// ```
#[proc_macro_attribute]
pub fn http_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    attribute("http_handler", attr, item, expand)
}

/// Exports a function as the component's `wedge:function/job` (world
/// `wedge:function/job-handler`): it runs once per job of the queue the
/// function is bound to.
///
/// The function takes one `wedge_sdk::Job` and returns `Result<(), E>` for
/// any `E: Display`; an `Err` fails the attempt with that message (the queue
/// retries the job later). It may be `async`. One function per component
/// may carry the attribute, and a component is either a job handler or an
/// HTTP handler.
///
/// ```ignore
/// #[wedge_sdk::job_handler]
/// fn handle(job: wedge_sdk::Job) -> Result<(), String> {
///     println!("job {} attempt {}: {} bytes", job.id, job.attempt, job.payload.len());
///     Ok(())
/// }
/// ```
#[proc_macro_attribute]
pub fn job_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    attribute("job_handler", attr, item, expand_job)
}

/// What both attributes do: refuse arguments, parse the function, expand it with
/// `expand`, and turn any error into a compile error at its span.
fn attribute(
    name: &str,
    attr: TokenStream,
    item: TokenStream,
    expand: fn(&ItemFn) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new(attr.span(), format!("#[{name}] takes no arguments")).to_compile_error().into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match expand(&function) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// The checks both attributes make of the function's signature.
fn check_signature(function: &ItemFn, attribute: &str, argument: &str) -> syn::Result<()> {
    let sig = &function.sig;
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!("an #[{attribute}] function takes exactly one argument: the `{argument}`"),
        ));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new(receiver.span(), format!("#[{attribute}] goes on a free function, not a method")));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), format!("an #[{attribute}] function cannot be generic")));
    }
    Ok(())
}

fn expand_job(function: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    check_signature(function, "job_handler", "wedge_sdk::Job")?;
    let sig = &function.sig;
    let name = &sig.ident;
    let run = if sig.asyncness.is_some() {
        quote!(::wedge_sdk::__private::run_job_async)
    } else {
        quote!(::wedge_sdk::__private::run_job)
    };
    Ok(quote! {
        #function

        // The export glue: a hidden type implementing the generated `job`
        // trait, exported with the job-handler bindings' `export!`. The
        // generated ABI functions are `unsafe` by nature.
        #[allow(unsafe_code)]
        const _: () = {
            #[doc(hidden)]
            struct __WedgeJobHandler;

            impl ::wedge_sdk::bindings::job_handler::exports::wedge::function::job::Guest
                for __WedgeJobHandler
            {
                fn handle(
                    job: ::wedge_sdk::bindings::job_handler::exports::wedge::function::job::Job,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    #run(job, #name)
                }
            }

            ::wedge_sdk::bindings::job_handler::export!(
                __WedgeJobHandler with_types_in ::wedge_sdk::bindings::job_handler
            );
        };
    })
}

fn expand(function: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    check_signature(function, "http_handler", "wedge_sdk::Request")?;
    let sig = &function.sig;
    let name = &sig.ident;
    let serve = if sig.asyncness.is_some() {
        quote!(::wedge_sdk::__private::serve_async)
    } else {
        quote!(::wedge_sdk::__private::serve)
    };
    Ok(quote! {
        #function

        // The export glue: a hidden type implementing the generated
        // `incoming-handler` trait, exported with the SDK's `export!`. The
        // generated ABI functions are `unsafe` by nature.
        #[allow(unsafe_code)]
        const _: () = {
            #[doc(hidden)]
            struct __WedgeHttpHandler;

            impl ::wedge_sdk::bindings::exports::wasi::http::incoming_handler::Guest
                for __WedgeHttpHandler
            {
                fn handle(
                    request: ::wedge_sdk::bindings::wasi::http::types::IncomingRequest,
                    response_out: ::wedge_sdk::bindings::wasi::http::types::ResponseOutparam,
                ) {
                    #serve(request, response_out, #name)
                }
            }

            ::wedge_sdk::bindings::export!(
                __WedgeHttpHandler with_types_in ::wedge_sdk::bindings
            );
        };
    })
}
