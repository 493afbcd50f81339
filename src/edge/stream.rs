//! Connection wrappers: the Pingora stream traits a wrapper passes through unchanged.
//!
//! Pingora's `Stream` is a boxed `IO`: besides reading and writing, a connection answers for
//! its TLS state, digests, id, peek and shutdown. A wrapper that only changes how bytes are
//! read or written (the header deadline, the hit loop's replay) hands all of those to the
//! stream it wraps; [`delegate_stream_traits`] writes those impls once.

/// Implement Pingora's non-I/O stream traits for `$ty` by calling them on its `$field`.
macro_rules! delegate_stream_traits {
    ($ty:ty, $field:ident) => {
        #[async_trait::async_trait]
        impl pingora_core::protocols::Shutdown for $ty {
            async fn shutdown(&mut self) {
                pingora_core::protocols::Shutdown::shutdown(&mut *self.$field).await
            }
        }

        impl pingora_core::protocols::UniqueID for $ty {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                pingora_core::protocols::UniqueID::id(&*self.$field)
            }
        }

        impl pingora_core::protocols::Ssl for $ty {
            fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
                pingora_core::protocols::Ssl::get_ssl(&*self.$field)
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
                pingora_core::protocols::Ssl::get_ssl_digest(&*self.$field)
            }

            fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
                pingora_core::protocols::Ssl::selected_alpn_proto(&*self.$field)
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $ty {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                pingora_core::protocols::GetTimingDigest::get_timing_digest(&*self.$field)
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                pingora_core::protocols::GetTimingDigest::get_read_pending_time(&*self.$field)
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                pingora_core::protocols::GetTimingDigest::get_write_pending_time(&*self.$field)
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $ty {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                pingora_core::protocols::GetProxyDigest::get_proxy_digest(&*self.$field)
            }
        }

        impl pingora_core::protocols::GetSocketDigest for $ty {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                pingora_core::protocols::GetSocketDigest::get_socket_digest(&*self.$field)
            }

            fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
                pingora_core::protocols::GetSocketDigest::set_socket_digest(&mut *self.$field, d)
            }
        }

        #[async_trait::async_trait]
        impl pingora_core::protocols::Peek for $ty {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                pingora_core::protocols::Peek::try_peek(&mut *self.$field, buf).await
            }
        }
    };
}

pub(crate) use delegate_stream_traits;
