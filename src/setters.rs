//! `with_*` setters for option structs, written once: each takes the options by value and
//! returns them, so options read as one chained expression (`BuildOptions::new(dir)
//! .with_target("app")`), and a field added later is one more line, not a breaking change.

/// Defines `pub fn NAME(self, value: impl Into<TYPE>) -> Self` setting `FIELD`, for each
/// `NAME => FIELD: TYPE` given; an `Option<T>` field listed so takes a `T` or an `Option<T>`.
/// Those in the `optional { … }` group are `Option<TYPE>` fields whose setter takes anything
/// that becomes a `TYPE` (`with_target("app")`) and sets it.
macro_rules! with_setters {
    ($ty:ident { $($name:ident => $field:ident : $t:ty),* $(,)? }
        $(optional { $($oname:ident => $ofield:ident : $ot:ty),* $(,)? })?) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](", stringify!($ty), "::", stringify!($field), ").")]
                #[must_use]
                pub fn $name(mut self, value: impl Into<$t>) -> Self {
                    self.$field = value.into();
                    self
                }
            )*
            $($(
                #[doc = concat!("Sets [`", stringify!($ofield), "`](", stringify!($ty), "::", stringify!($ofield), ").")]
                #[must_use]
                pub fn $oname(mut self, value: impl Into<$ot>) -> Self {
                    self.$ofield = Some(value.into());
                    self
                }
            )*)?
        }
    };
}

pub(crate) use with_setters;
