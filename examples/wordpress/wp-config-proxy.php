<?php
/*
 * WordPress behind trilb (or any TLS-terminating proxy): include this from wp-config.php,
 * BEFORE the line that requires wp-settings.php:
 *
 *     require_once __DIR__ . '/wp-config-proxy.php';
 *
 * trilb terminates HTTPS and talks plain HTTP to the WordPress servers, so PHP sees
 * $_SERVER['HTTPS'] unset and WordPress's is_ssl() says "no". WordPress then builds http://
 * URLs for scripts, styles and images (mixed content: browsers block them on an https page),
 * and with FORCE_SSL_ADMIN or an https site URL it redirects wp-admin and wp-login.php to
 * https:// over and over (a redirect loop), and refuses application passwords.
 *
 * trilb's frontend with `forwarded_for = true` sets X-Forwarded-Proto to "https" on the TLS
 * frontend, replacing any value a client sent, so the header can be trusted — as long as the
 * WordPress servers are reachable only through trilb (here they listen on 127.0.0.1; in
 * production firewall them). A client that can reach a server directly could forge it.
 */
if (isset($_SERVER['HTTP_X_FORWARDED_PROTO']) && $_SERVER['HTTP_X_FORWARDED_PROTO'] === 'https') {
    $_SERVER['HTTPS'] = 'on';
}
