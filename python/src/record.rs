//! The shape of the bindings' small result classes (transmits and events), written once.

/// A frozen class of `syncmux._syncmux` whose fields are read-only attributes, and whose
/// `repr()` is what `$repr` (a function of `&Self`) writes.
macro_rules! record {
    ($(#[$attr:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? } $repr:expr) => {
        $(#[$attr])*
        #[pyclass(module = "syncmux._syncmux", frozen, get_all)]
        pub(crate) struct $name {
            $($field: $ty,)*
        }

        #[pymethods]
        impl $name {
            fn __repr__(&self) -> String {
                let repr: fn(&Self) -> String = $repr;
                repr(self)
            }
        }
    };
}

/// A frozen class holding a text frame to send (`data`: `bytes`, `text`: `str`) beside its
/// other fields, each of which says whether Python can read it.
macro_rules! text_frame {
    (
        $(#[$attr:meta])* $name:ident { $($(#[$fattr:meta])* $field:ident: $ty:ty),* $(,)? }
        $repr:expr
    ) => {
        $(#[$attr])*
        #[pyclass(module = "syncmux._syncmux", frozen)]
        pub(crate) struct $name {
            $($(#[$fattr])* $field: $ty,)*
            bytes: Bytes,
        }

        #[pymethods]
        impl $name {
            /// The frame as `bytes`.
            #[getter]
            fn data(&self, py: Python<'_>) -> Py<PyAny> {
                crate::convert::py_bytes(py, &self.bytes)
            }

            /// The frame as `str`.
            #[getter]
            fn text(&self) -> String {
                crate::convert::py_text(&self.bytes)
            }

            fn __repr__(&self) -> String {
                let repr: fn(&Self) -> String = $repr;
                repr(self)
            }
        }
    };
}

pub(crate) use {record, text_frame};
