//! The `#[task]` attribute of twinpool. Use it as `twinpool::task` (the
//! `macros` feature, on by default); its documentation is there.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Pat, ReturnType, Type};

/// Turns a function into a typed task of twinpool: a value that names the
/// task to a [`Registry`](../twinpool/struct.Registry.html) and to an
/// executor, with its argument and result types checked by the compiler.
///
/// ```ignore
/// #[twinpool::task]
/// fn square(x: u64) -> u64 { x * x }
///
/// let tasks = twinpool::Registry::new().task(square);
/// let executor = twinpool::Executor::builder().threads(2).registry(tasks).build()?;
/// let f: twinpool::Future<u64> = executor.submit_task(square, 3)?;
/// ```
///
/// What it makes of `fn square(x: u64) -> u64`:
///
/// * a unit struct `square` (the task as a value), which implements
///   `twinpool::Task` with `Arg = u64`, `Output = u64`;
/// * `square::call(x)`, the function itself, to call it directly.
///
/// Several arguments become a tuple (`fn add(a: i64, b: i64)` takes
/// `(i64, i64)`), none becomes `()`. The task's name is its path,
/// `module_path!()` and the function's name (for example
/// `my_crate::jobs::square`), the same in every binary that compiles this
/// function; `#[task(name = "square")]` gives it another. A task cannot be
/// `async`, generic or a method.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(
    attr: proc_macro2::TokenStream,
    item: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    // `#[task]` or `#[task(name = "...")]`.
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("twinpool::task takes only `name = \"...\"`"))
        }
    });
    parser.parse2(attr)?;

    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    if let Some(tok) = sig.asyncness {
        return Err(syn::Error::new(
            tok.span(),
            "a twinpool task cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a twinpool task cannot be generic: its argument and result types are fixed at registration",
        ));
    }
    let mut names = Vec::new();
    let mut types: Vec<&Type> = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a twinpool task cannot take self",
                ))
            }
            FnArg::Typed(p) => {
                let ident = match &*p.pat {
                    Pat::Ident(id) => id.ident.clone(),
                    _ => format_ident!("__arg{}", i),
                };
                names.push(ident);
                types.push(&p.ty);
            }
        }
    }

    let vis = &func.vis;
    let ident = &sig.ident;
    let attrs = &func.attrs;
    let inputs = &sig.inputs;
    let block = &func.block;
    let output = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    // One argument is itself; several are a tuple; none is ().
    let (arg_ty, unpack) = match types.len() {
        1 => {
            let t = types[0];
            let n = &names[0];
            (quote!(#t), quote!(let #n = arg;))
        }
        _ => (quote!((#(#types,)*)), quote!(let (#(#names,)*) = arg;)),
    };
    let task_name = match name {
        Some(lit) => quote!(#lit),
        None => {
            let s = LitStr::new(&ident.to_string(), Span::call_site());
            quote!(::core::concat!(::core::module_path!(), "::", #s))
        }
    };
    let doc = format!(
        "The twinpool task `{ident}`: pass it to `Registry::task`, `Executor::submit_task` or `Executor::map_task`; call the function itself as `{ident}::call(..)`."
    );
    let docs = attrs.iter().filter(|a| a.path().is_ident("doc"));

    Ok(quote! {
        #(#docs)*
        #[doc = ""]
        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        impl #ident {
            /// The function itself, called in this thread.
            #(#attrs)*
            #vis fn call(#inputs) -> #output #block
        }

        impl ::twinpool::Task for #ident {
            type Arg = #arg_ty;
            type Output = #output;
            const NAME: &'static str = #task_name;
            fn run(arg: Self::Arg) -> Self::Output {
                #unpack
                #ident::call(#(#names),*)
            }
        }
    })
}
