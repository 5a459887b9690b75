// Verify the identity JWT that wxgate forwards upstream, with the JDK's own ECDSA and Gson for
// JSON (Debian packages no Java JOSE library; see ../README.md for nimbus-jose-jwt).
//
//   java -cp /usr/share/java/gson.jar Verify.java JWKS_URL ISSUER AUDIENCE TOKEN
//
// Prints the verified claims as JSON; exits 1 when the token is refused.
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.math.BigInteger;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.AlgorithmParameters;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.time.Instant;
import java.util.Base64;

public class Verify {
    static final long LEEWAY_SECONDS = 30;

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: java Verify.java JWKS_URL ISSUER AUDIENCE TOKEN");
            System.exit(2);
        }
        try {
            // In an app, keep the key set and fetch it again only on an unknown kid.
            JsonObject jwks = fetch(args[0]);
            byte[] claims = verify(jwks, args[1], args[2], args[3]);
            System.out.write(claims); // the verified payload, byte for byte (UTF-8 JSON)
            System.out.println();
        } catch (Exception e) {
            System.err.println("rejected: " + e);
            System.exit(1);
        }
    }

    /** The verified payload of {@code token}, or an exception saying why it is refused. */
    static byte[] verify(JsonObject jwks, String issuer, String audience, String token)
            throws GeneralSecurityException {
        String[] parts = token.split("\\.", -1);
        if (parts.length != 3) throw new GeneralSecurityException("not a JWT");
        JsonObject header = json(b64(parts[0]));
        // Pinned: the token never chooses its algorithm.
        if (!"ES256".equals(text(header, "alg"))) throw new GeneralSecurityException("unexpected alg");
        Signature ecdsa = Signature.getInstance("SHA256withECDSAinP1363Format"); // JWS's r || s
        ecdsa.initVerify(p256Key(jwks, text(header, "kid")));
        ecdsa.update((parts[0] + "." + parts[1]).getBytes(StandardCharsets.US_ASCII));
        if (!ecdsa.verify(b64(parts[2]))) throw new GeneralSecurityException("bad signature");

        byte[] payload = b64(parts[1]);
        JsonObject claims = json(payload);
        if (!issuer.equals(text(claims, "iss"))) throw new GeneralSecurityException("wrong issuer");
        if (!audience.equals(text(claims, "aud"))) throw new GeneralSecurityException("wrong audience");
        JsonElement exp = claims.get("exp");
        if (exp == null || exp.getAsLong() + LEEWAY_SECONDS < Instant.now().getEpochSecond()) {
            throw new GeneralSecurityException("expired");
        }
        return payload;
    }

    /** The EC P-256 key with this kid from the JWKS. */
    static PublicKey p256Key(JsonObject jwks, String kid) throws GeneralSecurityException {
        for (JsonElement element : jwks.getAsJsonArray("keys")) {
            JsonObject jwk = element.getAsJsonObject();
            if (kid == null || !kid.equals(text(jwk, "kid"))) continue;
            if (!"EC".equals(text(jwk, "kty")) || !"P-256".equals(text(jwk, "crv"))) break;
            AlgorithmParameters p256 = AlgorithmParameters.getInstance("EC");
            p256.init(new ECGenParameterSpec("secp256r1"));
            ECPoint point = new ECPoint(
                    new BigInteger(1, b64(text(jwk, "x"))), new BigInteger(1, b64(text(jwk, "y"))));
            return KeyFactory.getInstance("EC").generatePublic(
                    new ECPublicKeySpec(point, p256.getParameterSpec(ECParameterSpec.class)));
        }
        throw new GeneralSecurityException("unknown kid");
    }

    static JsonObject fetch(String url) throws Exception {
        HttpResponse<String> response = HttpClient.newHttpClient().send(
                HttpRequest.newBuilder(URI.create(url)).build(), HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) throw new IllegalStateException("jwks: HTTP " + response.statusCode());
        return JsonParser.parseString(response.body()).getAsJsonObject();
    }

    static byte[] b64(String text) {
        return Base64.getUrlDecoder().decode(text);
    }

    static JsonObject json(byte[] utf8) {
        return JsonParser.parseString(new String(utf8, StandardCharsets.UTF_8)).getAsJsonObject();
    }

    /** A string member, or null when it is missing or not a string. */
    static String text(JsonObject object, String name) {
        JsonElement value = object.get(name);
        return value != null && value.isJsonPrimitive() && value.getAsJsonPrimitive().isString()
                ? value.getAsString() : null;
    }
}
