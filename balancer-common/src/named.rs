//! [`named_enum!`]: an enum whose variants each have an id (what a map or a message stores) and a
//! name (what messages, the command line and metrics labels say), written as one table, so that
//! the variants, `ALL`, `name`, `from_name` and `from_id` cannot drift apart. `no_std`, and every
//! function a plain `match`: the eBPF program calls `from_id` on the selection path.

/// Defines `#[repr($int)] enum $name` from `Variant = id => "name",` rows, with:
/// - `ALL`: every variant, in the order of the rows;
/// - `name(self)`: its name; `from_name(&str)`: the variant of a name;
/// - `from_id($int)`: the variant of an id (`const`, a `match`).
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $int:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $id:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr($int)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $id, )+
        }

        impl $name {
            /// Every variant, in the order of its definition.
            pub const ALL: [$name; [$($id),+].len()] = [$($name::$variant),+];

            /// Its name, as messages, the command line and metrics labels say it.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )+
                }
            }

            /// The variant called `name`, if any.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $label => Some($name::$variant), )+
                    _ => None,
                }
            }

            /// The variant whose id is `id`, if any.
            pub const fn from_id(id: $int) -> Option<Self> {
                match id {
                    $( $id => Some($name::$variant), )+
                    _ => None,
                }
            }
        }
    };
}
