<?php
// Verify the identity JWT that wxgate forwards upstream, with PHP's own openssl and json
// extensions (Debian packages no PHP JWT library; see ../README.md for firebase/php-jwt).
//
//   php verify.php JWKS_URL ISSUER AUDIENCE TOKEN
//
// Prints the verified claims as JSON; exits 1 when the token is refused.
declare(strict_types=1);

const LEEWAY = 30;

function b64url_decode(string $data): string
{
    $bytes = base64_decode(strtr($data, '-_', '+/'), true);
    if ($bytes === false) {
        throw new UnexpectedValueException('bad base64url');
    }
    return $bytes;
}

/** An EC P-256 JWK as a PEM public key: a fixed SubjectPublicKeyInfo prefix, then 04 || x || y. */
function p256_pem(array $jwk): string
{
    $point = "\x04" . b64url_decode($jwk['x'] ?? '') . b64url_decode($jwk['y'] ?? '');
    if (strlen($point) !== 65) {
        throw new UnexpectedValueException('bad P-256 key');
    }
    $der = hex2bin('3059301306072a8648ce3d020106082a8648ce3d030107034200') . $point;
    return "-----BEGIN PUBLIC KEY-----\n" . chunk_split(base64_encode($der), 64) . "-----END PUBLIC KEY-----\n";
}

/** A JWS ES256 signature (r || s, 32 bytes each) in the DER form openssl_verify expects. */
function ecdsa_der(string $raw): string
{
    if (strlen($raw) !== 64) {
        throw new UnexpectedValueException('bad signature length');
    }
    $int = function (string $n): string {
        $n = ltrim($n, "\0");
        if ($n === '' || ord($n[0]) > 0x7f) {
            $n = "\0" . $n;
        }
        return "\x02" . chr(strlen($n)) . $n;
    };
    $seq = $int(substr($raw, 0, 32)) . $int(substr($raw, 32));
    return "\x30" . chr(strlen($seq)) . $seq;
}

/** The verified claims of $token, or an exception saying why it is refused. */
function verify_identity(array $jwks, string $issuer, string $audience, string $token): array
{
    $parts = explode('.', $token);
    if (count($parts) !== 3) {
        throw new UnexpectedValueException('not a JWT');
    }
    [$head, $body, $sig] = $parts;
    $header = json_decode(b64url_decode($head), true, 8, JSON_THROW_ON_ERROR);
    // Pinned: the token never chooses its algorithm.
    if (($header['alg'] ?? null) !== 'ES256') {
        throw new UnexpectedValueException('unexpected algorithm');
    }
    $keys = array_filter($jwks['keys'] ?? [], fn ($k) => ($k['kid'] ?? null) === ($header['kid'] ?? false));
    $key = reset($keys);
    if ($key === false || ($key['kty'] ?? '') !== 'EC' || ($key['crv'] ?? '') !== 'P-256') {
        throw new UnexpectedValueException('unknown kid');
    }
    if (openssl_verify("$head.$body", ecdsa_der(b64url_decode($sig)), p256_pem($key), OPENSSL_ALGO_SHA256) !== 1) {
        throw new UnexpectedValueException('bad signature');
    }
    $claims = json_decode(b64url_decode($body), true, 16, JSON_THROW_ON_ERROR);
    if (($claims['iss'] ?? null) !== $issuer) {
        throw new UnexpectedValueException('wrong issuer');
    }
    if (!in_array($audience, (array) ($claims['aud'] ?? []), true)) {
        throw new UnexpectedValueException('wrong audience');
    }
    if (!is_int($claims['exp'] ?? null) || $claims['exp'] + LEEWAY < time()) {
        throw new UnexpectedValueException('expired');
    }
    return $claims;
}

if ($argc !== 5) {
    fwrite(STDERR, "usage: php verify.php JWKS_URL ISSUER AUDIENCE TOKEN\n");
    exit(2);
}
[, $jwksUrl, $issuer, $audience, $token] = $argv;
try {
    // In an app, cache the key set (APCu, a file) and fetch it again only on an unknown kid.
    $jwks = json_decode((string) file_get_contents($jwksUrl), true, 8, JSON_THROW_ON_ERROR);
    $claims = verify_identity($jwks, $issuer, $audience, $token);
} catch (Throwable $e) {
    fwrite(STDERR, 'rejected: ' . $e->getMessage() . "\n");
    exit(1);
}
echo json_encode($claims), "\n";
