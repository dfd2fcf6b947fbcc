use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

fn key_error(result: Result<Resolved>) -> (String, String) {
    match result.unwrap_err() {
        Error::Config(e) => (e.path(), e.problem),
        other => panic!("expected a config key error, got {other}"),
    }
}

#[test]
fn defaults_resolve_with_an_ephemeral_key_and_a_generated_run_id() {
    let r = load(None, &env(&[])).unwrap();
    assert_eq!(r.config, EsperConfig::default());
    assert_eq!(r.run_id.len(), 36);
    assert!(r.sources.is_empty());
}

#[test]
fn file_and_env_overrides_apply_in_order() {
    let file =
        write("[run]\nseed = 3\nexperiment = \"growth\"\n[leyline.security]\nnonce_ttl_s = 400\n");
    let e = env(&[("ESPER_RUN__SEED", "7"), ("ESPER_RUN__RUN_ID", "run-42")]);
    let r = load(Some(file.path()), &e).unwrap();
    assert_eq!(r.config.run.seed, 7);
    assert_eq!(r.config.run.experiment, "growth");
    assert_eq!(r.config.leyline.security.nonce_ttl_s, 400);
    assert_eq!(r.run_id, "run-42");
    assert_eq!(r.sources.len(), 3);
}

#[test]
fn unknown_keys_are_rejected_with_the_key_named() {
    let file = write("[leyline.security]\nnonce_ttl = 5\n");
    let (key, _) = key_error(load(Some(file.path()), &env(&[])));
    assert_eq!(key, "leyline.security.nonce_ttl");

    let file = write("[tolaria]\nepoch = 5\n");
    let (key, _) = key_error(load(Some(file.path()), &env(&[])));
    assert_eq!(key, "tolaria.epoch");

    let file = write("[kasmina]\nembargo = 5\n");
    let (key, _) = key_error(load(Some(file.path()), &env(&[])));
    assert_eq!(key, "kasmina.embargo");

    let file = write("[narset]\nseed = 5\n");
    let (key, _) = key_error(load(Some(file.path()), &env(&[])));
    assert_eq!(key, "narset");

    let (key, detail) = key_error(load(None, &env(&[("ESPER_RUN__SEEED", "1")])));
    assert_eq!(key, "run.seeed");
    assert!(detail.contains("ESPER_RUN__SEEED"), "{detail}");
}

#[test]
fn bad_values_are_rejected_with_the_key_named() {
    let file = write("[run]\nseed = \"seven\"\n");
    let (key, _) = key_error(load(Some(file.path()), &env(&[])));
    assert_eq!(key, "run.seed");

    let (key, detail) = key_error(load(
        None,
        &env(&[("ESPER_LEYLINE__SECURITY__FRESHNESS_WINDOW_S", "0")]),
    ));
    assert_eq!(key, "leyline.security.freshness_window_s");
    assert!(
        detail.contains("ESPER_LEYLINE__SECURITY__FRESHNESS_WINDOW_S"),
        "{detail}"
    );

    let (key, _) = key_error(load(None, &env(&[("ESPER_RUN__RUN_ID", "bad id/..")])));
    assert_eq!(key, "run.run_id");

    let (key, _) = key_error(load(
        None,
        &env(&[("ESPER_LEYLINE__SECURITY__NONCE_TTL_S", "-1")]),
    ));
    assert_eq!(key, "leyline.security.nonce_ttl_s");

    let (key, detail) = key_error(load(None, &env(&[("ESPER_RUNTIME__LISTEN", "port 80")])));
    assert_eq!(key, "runtime.listen");
    assert!(detail.contains("host:port"), "{detail}");
}

#[test]
fn unknown_plain_variables_and_malformed_overrides_are_errors() {
    assert!(
        matches!(load(None, &env(&[("ESPER_SEED", "1")])), Err(Error::Env { var, .. }) if var == "ESPER_SEED")
    );
    assert!(matches!(
        load(None, &env(&[("ESPER_RUN____SEED", "1")])),
        Err(Error::Env { .. })
    ));
    // `run.seed` is a number, so it cannot hold a sub-key.
    let (key, _) = key_error(load(None, &env(&[("ESPER_RUN__SEED__X", "1")])));
    assert_eq!(key, "run.seed");
    // A misspelt section names the variable that carried it (issue #19 item 10).
    let (key, problem) = key_error(load(None, &env(&[("ESPER_TOLARAI__EPOCHS", "3")])));
    assert_eq!(key, "tolarai");
    assert!(
        problem.contains("set by ESPER_TOLARAI__EPOCHS"),
        "{problem}"
    );
    // Unrelated variables are none of our business.
    load(None, &env(&[("HOME", "/root"), ("ESPERANTO", "x")])).unwrap();
}

#[test]
fn secrets_come_from_env_or_file_and_fail_loudly() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let file = write("[leyline.security.secret]\nsource = \"env\"\nvar = \"ESPER_SECRET\"\n");
    let err = load(Some(file.path()), &env(&[])).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Secret {
                cause: SecretProblem::NotSet,
                ..
            }
        ),
        "{err}"
    );
    load(Some(file.path()), &env(&[("ESPER_SECRET", hex)])).unwrap();
    let err = load(Some(file.path()), &env(&[("ESPER_SECRET", "abcd")])).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");

    let secret = write(hex);
    let cfg = write(&format!(
        "[leyline.security.secret]\nsource = \"file\"\npath = {:?}\n",
        secret.path().display().to_string()
    ));
    load(Some(cfg.path()), &env(&[])).unwrap();
    let cfg =
        write("[leyline.security.secret]\nsource = \"file\"\npath = \"/nonexistent/esper.key\"\n");
    assert!(matches!(
        load(Some(cfg.path()), &env(&[])),
        Err(Error::Secret { .. })
    ));
}

#[test]
fn missing_or_malformed_files_are_errors() {
    assert!(matches!(
        load(Some(Path::new("/nonexistent/esper.toml")), &env(&[])),
        Err(Error::ReadConfig { .. })
    ));
    let file = write("[run\n");
    assert!(matches!(
        load(Some(file.path()), &env(&[])),
        Err(Error::ParseConfig { .. })
    ));
    let file = write("[run]\nseed = 1\n");
    let path = file.path().display().to_string();
    let r = load(None, &env(&[("ESPER_CONFIG", &path)])).unwrap();
    assert_eq!(r.config.run.seed, 1);
}

#[test]
fn the_example_file_is_complete_and_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../esper.example.toml");
    let r = load(Some(&example), &env(&[])).unwrap();
    // The example documents every key with its default value.
    let mut expected = EsperConfig::default();
    expected.run.run_id = r.config.run.run_id.clone();
    assert_eq!(r.config, expected);
    let text = std::fs::read_to_string(&example).unwrap();
    let rendered: toml::Table = toml::from_str(&EsperConfig::default().to_toml().unwrap()).unwrap();
    for key in leaf_keys(&rendered, "") {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(leaf),
            "esper.example.toml does not document `{key}`"
        );
    }
}

fn leaf_keys(table: &toml::Table, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v.as_table() {
            Some(t) => keys.extend(leaf_keys(t, &key)),
            None => keys.push(key),
        }
    }
    keys
}

#[test]
fn the_redis_bus_needs_a_shared_secret_and_a_redis_url() {
    let redis = "[oona.backend]\nkind = \"redis\"\nurl = \"redis://10.0.0.5:6379/0\"\n";
    let (key, detail) = key_error(load(Some(write(redis).path()), &env(&[])));
    assert_eq!(key, "leyline.security.secret");
    assert!(detail.contains("ephemeral"), "{detail}");

    let hex = "ab".repeat(32);
    let shared =
        format!("{redis}[leyline.security.secret]\nsource = \"env\"\nvar = \"ESPER_SECRET\"\n");
    let r = load(Some(write(&shared).path()), &env(&[("ESPER_SECRET", &hex)])).unwrap();
    assert!(matches!(
        r.config.oona.backend,
        oona::config::BackendConfig::Redis { .. }
    ));

    let bad = "[oona.backend]\nkind = \"redis\"\nurl = \"http://x\"\n";
    let (key, _) = key_error(load(Some(write(bad).path()), &env(&[])));
    assert_eq!(key, "oona.backend.url");
    let (key, detail) = key_error(load(None, &env(&[("ESPER_OONA__BLOCK_MS", "900")])));
    assert_eq!(key, "oona.block_ms");
    assert!(detail.contains("ESPER_OONA__BLOCK_MS"), "{detail}");
}

#[test]
fn the_learned_controller_needs_a_policy_and_a_key_that_outlives_the_process() {
    let (key, _) = key_error(load(None, &env(&[("ESPER_TAMIYO__CONTROLLER", "learned")])));
    assert_eq!(key, "tamiyo.learned.policy");
    let (key, problem) = key_error(load(
        None,
        &env(&[
            ("ESPER_TAMIYO__CONTROLLER", "learned"),
            ("ESPER_TAMIYO__LEARNED__POLICY", "p.safetensors"),
        ]),
    ));
    assert_eq!(key, "tamiyo.learned.key");
    assert!(problem.contains("shared between"), "{problem}");
    // A key of its own, read from a (non-override) variable, resolves and
    // is the policy key; the bus keeps its own.
    let hex = "cd".repeat(32);
    let file = write(
        "[tamiyo]\ncontroller = \"learned\"\n[tamiyo.learned]\npolicy = \"p.safetensors\"\n\
         key = { source = \"env\", var = \"ESPER_POLICY_KEY\" }\n",
    );
    let r = load(Some(file.path()), &env(&[("ESPER_POLICY_KEY", &hex)])).unwrap();
    let expected = SigningKey::from_hex(&hex).unwrap();
    let tag = |k: &SigningKey| leyline::security::domain_mac(k, "t", b"x");
    assert_eq!(tag(&r.policy_key), tag(&expected));
    assert_ne!(tag(&r.signing_key), tag(&expected));
}

#[test]
fn learned_blueprint_parameters_are_checked_against_the_blueprint() {
    let ok =
        "[tamiyo.learned]\nblueprint_parameters = { \"conv.depthwise\" = { kernel_size = 5 } }\n";
    let r = load(Some(write(ok).path()), &env(&[])).unwrap();
    assert_eq!(
        r.config.tamiyo.learned.blueprint_parameters["conv.depthwise"]["kernel_size"],
        5.0
    );
    for (bad, problem) in [
        (
            "{ \"conv.nope\" = { kernel_size = 5 } }",
            "unknown blueprint",
        ),
        (
            "{ \"conv.depthwise\" = { kernel_size = 9 } }",
            "kernel_size",
        ),
        ("{ \"conv.depthwise\" = { width = 2 } }", "width"),
    ] {
        let text = format!("[tamiyo.learned]\nblueprint_parameters = {bad}\n");
        let (key, detail) = key_error(load(Some(write(&text).path()), &env(&[])));
        assert!(
            key.starts_with("tamiyo.learned.blueprint_parameters."),
            "{key}"
        );
        assert!(detail.contains(problem), "{bad}: {detail}");
    }
}
