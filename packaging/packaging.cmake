# packaging.cmake - what `cmake --install` lays out besides the programs
# (units, configuration, tmpfiles.d, examples, documentation, man pages),
# and the Debian packages CPack makes of it (packaging/README.md).
#
# Components, one Debian package each:
#   agent    porcupine-agent    the agent, its Redis unit, porcupinectl
#   milter   porcupine-milter   Postfix's milter
#   dovecot  dovecot-porcupine  the Dovecot plugin and porcupine-checkpassword
#
# Paths the system fixes are absolute (Debian 12: /etc, /lib/systemd/system,
# /usr/lib/tmpfiles.d); the rest follow the prefix. The packages are made
# with the prefix /usr whatever the build's own prefix is, so
# `cmake --install BUILD --prefix /usr` gives the packages' tree.
set(PORCUPINE_SYSCONFDIR /etc/porcupine CACHE PATH "Where porcupine.conf and the cluster secret live")
set(PORCUPINE_SYSTEMD_UNITDIR /lib/systemd/system CACHE PATH "systemd unit directory")
set(PORCUPINE_TMPFILESDIR /usr/lib/tmpfiles.d CACHE PATH "tmpfiles.d directory")
set(PORCUPINE_PACKAGING_DIR ${CMAKE_CURRENT_LIST_DIR})

# porcupine-agent
install(FILES ${PORCUPINE_PACKAGING_DIR}/etc/porcupine.conf
        DESTINATION ${PORCUPINE_SYSCONFDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-agent.service
              ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-redis.service
        DESTINATION ${PORCUPINE_SYSTEMD_UNITDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/tmpfiles/porcupine.conf
        DESTINATION ${PORCUPINE_TMPFILESDIR} COMPONENT agent)
install(FILES ${PORCUPINE_PACKAGING_DIR}/etc/porcupine.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-agent COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/docs/agent.md
              ${PROJECT_SOURCE_DIR}/docs/configuration.md ${PROJECT_SOURCE_DIR}/docs/architecture.md
              ${PROJECT_SOURCE_DIR}/docs/monitoring.md ${PORCUPINE_PACKAGING_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/porcupine-agent COMPONENT agent)
# The Grafana dashboard of docs/monitoring.md: beside the example
# configuration, not under doc/, which minimal installations leave out
# (dpkg path-exclude) while Grafana's provisioning may point at it.
install(FILES ${PORCUPINE_PACKAGING_DIR}/grafana/porcupine-dashboard.json
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-agent/grafana COMPONENT agent)

# Man pages, built by the target porcupine-man (part of "all"):
# porcupine.conf(5) is printed by `porcupine-config-doc --man` from the
# parameter table, so it lists exactly the parameters of the programs it
# is installed with; the other pages are written by hand in docs/man/ and
# given the version here. Each is installed gzip -9n'd (no name or time
# stamp, so the same tree gives the same bytes), as Debian's policy wants
# them: CPack does not compress them.
find_program(PORCUPINE_GZIP gzip REQUIRED)
set(PORCUPINE_MAN_DIR ${PROJECT_BINARY_DIR}/man)
set(PORCUPINE_MAN_PAGES porcupine-agent.8 porcupinectl.8 porcupine-milter.8)
foreach(page IN LISTS PORCUPINE_MAN_PAGES)
  configure_file(${PROJECT_SOURCE_DIR}/docs/man/${page}.in ${PORCUPINE_MAN_DIR}/${page} @ONLY)
endforeach()
add_custom_command(OUTPUT ${PORCUPINE_MAN_DIR}/porcupine.conf.5
                   COMMAND sh -c "\"$0\" --man > \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\""
                           $<TARGET_FILE:porcupine-config-doc> ${PORCUPINE_MAN_DIR}/porcupine.conf.5
                   DEPENDS porcupine-config-doc
                   COMMENT "Generating porcupine.conf.5 from the parameter table" VERBATIM)
set(PORCUPINE_MAN_GZ)
foreach(page porcupine.conf.5 ${PORCUPINE_MAN_PAGES})
  add_custom_command(OUTPUT ${PORCUPINE_MAN_DIR}/${page}.gz
                     COMMAND sh -c "\"$0\" -9n < \"$1\" > \"$1.gz.tmp\" && mv -f \"$1.gz.tmp\" \"$1.gz\""
                             ${PORCUPINE_GZIP} ${PORCUPINE_MAN_DIR}/${page}
                     DEPENDS ${PORCUPINE_MAN_DIR}/${page} VERBATIM)
  list(APPEND PORCUPINE_MAN_GZ ${PORCUPINE_MAN_DIR}/${page}.gz)
endforeach()
add_custom_target(porcupine-man ALL DEPENDS ${PORCUPINE_MAN_GZ})
install(FILES ${PORCUPINE_MAN_DIR}/porcupine-agent.8.gz ${PORCUPINE_MAN_DIR}/porcupinectl.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT agent)
install(FILES ${PORCUPINE_MAN_DIR}/porcupine.conf.5.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man5 COMPONENT agent)
install(FILES ${PORCUPINE_MAN_DIR}/porcupine-milter.8.gz
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT milter)

# porcupine-milter
install(FILES ${PORCUPINE_PACKAGING_DIR}/systemd/porcupine-milter.service
        DESTINATION ${PORCUPINE_SYSTEMD_UNITDIR} COMPONENT milter)
install(FILES ${PORCUPINE_PACKAGING_DIR}/postfix/main.cf.porcupine
        DESTINATION ${CMAKE_INSTALL_DATADIR}/porcupine-milter COMPONENT milter)
install(FILES ${PROJECT_SOURCE_DIR}/milter/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/porcupine-milter COMPONENT milter)

# dovecot-porcupine: the conf.d snippet is an example, not enabled.
install(FILES ${PROJECT_SOURCE_DIR}/dovecot-plugin/conf.d/90-porcupine.conf
        DESTINATION ${CMAKE_INSTALL_DATADIR}/dovecot-porcupine COMPONENT dovecot)
install(FILES ${PROJECT_SOURCE_DIR}/dovecot-plugin/README.md
        DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/dovecot-porcupine COMPONENT dovecot)

# ---- Debian packages (cpack -G DEB; scripts/build-debs.sh) ----
set(PORCUPINE_DEB_DIR ${PORCUPINE_PACKAGING_DIR}/deb)
set(PORCUPINE_DEB_RELEASE 1)
set(PORCUPINE_DEB_VERSION ${PROJECT_VERSION}-${PORCUPINE_DEB_RELEASE})

# cpack packages the build tree as it is (scripts/build-debs.sh builds the
# programs first): its install step must not build "all", the tests
# included. So `make install` does not build first either.
set(CMAKE_SKIP_INSTALL_ALL_DEPENDENCY ON)
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME porcupine)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "Porcupine for Postfix + Dovecot")
set(CPACK_PACKAGE_CONTACT "Porcupine maintainers <root@localhost>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL agent milter dovecot)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE ${PORCUPINE_DEB_RELEASE})
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies from dpkg-shlibdeps (${shlibs:Depends}).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS OFF)
# Maintainer scripts 0755, control files 0644, whatever the checkout's modes.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME porcupine-agent)
set(CPACK_DEBIAN_AGENT_PACKAGE_DEPENDS "redis-server, adduser, init-system-helpers (>= 1.54~)")
set(CPACK_DEBIAN_AGENT_PACKAGE_CONTROL_EXTRA
    ${PORCUPINE_DEB_DIR}/porcupine-agent/conffiles ${PORCUPINE_DEB_DIR}/porcupine-agent/postinst
    ${PORCUPINE_DEB_DIR}/porcupine-agent/prerm ${PORCUPINE_DEB_DIR}/porcupine-agent/postrm)
set(CPACK_COMPONENT_AGENT_DESCRIPTION "Porcupine mail cluster agent for Postfix + Dovecot nodes
porcupine-agent makes N stock Postfix + Dovecot nodes one mail cluster:
membership, user map, placement and optimistic replication of messages
and user profiles. It keeps its metadata in a node-local Redis instance of
its own (porcupine-redis.service; the distribution's redis-server.service
is not used) and message bodies under /var/lib/porcupine. Includes
porcupinectl and porcupine-config-doc.")

set(CPACK_DEBIAN_MILTER_PACKAGE_NAME porcupine-milter)
set(CPACK_DEBIAN_MILTER_PACKAGE_DEPENDS "porcupine-agent (= ${PORCUPINE_DEB_VERSION}), postfix, init-system-helpers (>= 1.54~)")
set(CPACK_DEBIAN_MILTER_PACKAGE_CONTROL_EXTRA
    ${PORCUPINE_DEB_DIR}/porcupine-milter/postinst ${PORCUPINE_DEB_DIR}/porcupine-milter/prerm
    ${PORCUPINE_DEB_DIR}/porcupine-milter/postrm)
set(CPACK_COMPONENT_MILTER_DESCRIPTION "Porcupine mail cluster milter for Postfix
porcupine-milter answers Postfix smtpd at RCPT TO from the cluster's user
database (550 unknown, 452 over quota, 451 when the cluster cannot
answer) and adds one trace header. The main.cf lines are printed at
installation, not applied.")

set(CPACK_DEBIAN_DOVECOT_PACKAGE_NAME dovecot-porcupine)
# The plugin loads only into the Dovecot ABI it was built against.
set(PORCUPINE_DOVECOT_ABI_LINE "")
if(EXISTS ${PORCUPINE_DOVECOT_INCLUDE}/config.h)
  file(STRINGS ${PORCUPINE_DOVECOT_INCLUDE}/config.h PORCUPINE_DOVECOT_ABI_LINE REGEX "^#define DOVECOT_ABI_VERSION ")
endif()
string(REGEX REPLACE "^#define DOVECOT_ABI_VERSION \"([0-9.]+)\\.ABIv([0-9]+)\\(.*$" "dovecot-abi-\\1.abiv\\2"
       PORCUPINE_DOVECOT_ABI_PACKAGE "${PORCUPINE_DOVECOT_ABI_LINE}")
string(TOLOWER "${PORCUPINE_DOVECOT_ABI_PACKAGE}" PORCUPINE_DOVECOT_ABI_PACKAGE)
set(CPACK_DEBIAN_DOVECOT_PACKAGE_DEPENDS "porcupine-agent (= ${PORCUPINE_DEB_VERSION}), dovecot-core (>= 1:2.3), dovecot-core (<< 1:2.4), adduser")
if(PORCUPINE_DOVECOT_ABI_PACKAGE MATCHES "^dovecot-abi-")
  string(APPEND CPACK_DEBIAN_DOVECOT_PACKAGE_DEPENDS ", ${PORCUPINE_DOVECOT_ABI_PACKAGE}")
endif()
set(CPACK_DEBIAN_DOVECOT_PACKAGE_CONTROL_EXTRA
    ${PORCUPINE_DEB_DIR}/dovecot-porcupine/postinst ${PORCUPINE_DEB_DIR}/dovecot-porcupine/postrm)
set(CPACK_COMPONENT_DOVECOT_DESCRIPTION "Porcupine mail cluster plugin for Dovecot 2.3
The Dovecot mail plugin porcupine (lib20_porcupine_plugin.so) keeps
Dovecot's storage as a cache of the cluster, and porcupine-checkpassword
authenticates users against the cluster's user database. The conf.d
snippet is installed as an example in /usr/share/dovecot-porcupine and
is not enabled.")

include(CPack)
